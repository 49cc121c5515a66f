"""What a user of transformers, TRL and PEFT does with a MiniMinds folder, in a Python that never imports MiniMinds
(issue 17): the README's snippet for TRL and PEFT runs as written, and each setting it names is needed."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.pretraining import make_parser as pretrain_parser
from recipes.training.pretraining import pretrain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_folder(tiny_tokenizer_dir, tmp_path_factory):
    """A saved, randomly initialised minimind-tiny with the tiny tokenizer: all an outside user gets."""
    folder = tmp_path_factory.mktemp("library-use") / "model"
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def readme_block(heading: str) -> str:
    """The first python block of the README section under `heading`."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split(f"\n{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_outside(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python that asserts at the end that it never imported MiniMinds."""
    check = "\nimport sys\nassert not [m for m in sys.modules if m.startswith(('modeling_miniminds', 'recipes'))]\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    command = [sys.executable, "-c", code + check]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_readme_trl_and_peft_snippet_runs_and_needs_both_settings(model_folder, tiny_corpus, tmp_path):
    code = readme_block("### With TRL and PEFT directly")
    code = code.replace("runs/demo/sft", str(model_folder)).replace("runs/demo/data/dpo.jsonl", str(tiny_corpus["dpo"]))
    code = code.replace("report_to=[])", "report_to=[], use_cpu=True)")  # as its comment says, without a GPU
    done = run_outside(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    without_trust = run_outside(code.replace("trust_remote_code=True, max_steps", "max_steps"), tmp_path)
    assert "contains custom code which must be executed" in without_trust.stderr  # the reference reload
    without_targets = run_outside(code.replace(', target_modules="all-linear"', ""), tmp_path)
    assert "Please specify `target_modules`" in without_targets.stderr


def test_trl_sft_trainer_reads_the_corpus_sft_file_as_conversations(tiny_corpus, tiny_tokenizer_dir, tmp_path):
    """Issue 17: the corpus wrote its chats under `conversations`, and TRL's SFTTrainer with assistant_only_loss
    stopped at `load_dataset("json", ...)` of them: "the dataset is not conversational". Loss goes on assistant
    tokens only."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    chats = load_dataset("json", data_files=str(tiny_corpus["sft"]), split="train")
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer)))
    args = SFTConfig(
        output_dir=str(tmp_path), assistant_only_loss=True, max_length=256, use_cpu=True, bf16=False, report_to=[]
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=chats, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    trained = batch["labels"] != -100
    assert 0 < trained.sum() < (batch["input_ids"] != tokenizer.pad_token_id).sum()  # replies only, not prompts
    assert (batch["input_ids"][trained] == tokenizer.eos_token_id).any()  # end of turn is trained


def test_a_run_folder_card_states_the_run_and_its_quick_start_runs(tiny_corpus, tiny_tokenizer_dir, tmp_path):
    """Issue 17: the README.md in a run's folder was TRL's draft (`model="None"`, no `trust_remote_code`), whose
    quick start failed. It is the project's card: the stage, data, steps, held-out numbers, and loading code that
    runs as written in a Python without MiniMinds."""
    out, held_out = tmp_path / "pretrain", Path(tiny_corpus["eval"]) / "pretrain.jsonl"
    argv = ["--config", str(REPO / "recipes" / "configs" / "pretrain_tiny.yaml"), "--output_dir", str(out)]
    argv += ["--dataset_name", str(tiny_corpus["pretrain"]), "--eval_dataset_name", str(held_out)]
    argv += ["--tokenizer_name_or_path", str(tiny_tokenizer_dir), "--max_steps", "3", "--block_size", "64"]
    result = pretrain(
        *pretrain_parser().parse_args_and_config([*argv, "--report_to", "none", "--disable_tqdm", "true"])
    )

    card = (out / "README.md").read_text(encoding="utf-8")
    assert 'model="None"' not in card and "`MiniMindForCausalLM` (model_type `minimind`)" in card
    assert (
        "Trained by the MiniMinds `pretrain` stage (`recipes/pretrain.py`) from scratch for 3 optimizer steps." in card
    )
    assert f"Trained on `{tiny_corpus['pretrain']}`; held-out data: `{held_out}`." in card
    assert f"- eval_loss: {result['after']['eval_loss']:.4g}" in card
    assert f'AutoTokenizer.from_pretrained("{out}", trust_remote_code=True)' in card
    assert f'AutoModelForCausalLM.from_pretrained("{out}", trust_remote_code=True)' in card
    done = run_outside(re.search(r"```python\n(.*?)```", card, re.S).group(1), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
