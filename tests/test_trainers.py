"""The trainer mixin under every trainer the stages use (Trainer, SFT, reward, DPO, GRPO), and stage chains on saved
folders.

Guards what an outside probe with trl 1.16 found: a folder saved by a TRL trainer (`output_router_logits: false` in
its config) could not be trained again by SFTTrainer or DPOTrainer, TRL's fused LM head dropped the MoE balance loss,
and the mixin's `compute_loss` asked GRPO for outputs it refuses to give.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from data_process.collators import PackedBlockCollator
from data_process.jsonl import read_jsonl
from data_process.rewards import accuracy_reward
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.args import DPOStageConfig, GRPOStageConfig, RewardStageConfig, SFTStageConfig
from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.checkpoints import STAGING_PREFIX, is_complete_checkpoint
from recipes.training.models import save_final_model
from recipes.training.packed_text import PretrainConfig, PretrainTrainer
from recipes.training.trainer import DPOStageTrainer, GRPOStageTrainer, RewardStageTrainer, SFTStageTrainer

STEPS = 2


def common_args(output_dir, **overrides):
    return dict(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_steps=STEPS,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        **overrides,
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def save_base(folder, tokenizer, **config):
    """A tiny random MiniMind saved as a complete folder (weights, remote code, tokenizer)."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer), **config))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_folder(tokenizer, tmp_path_factory):
    return save_base(tmp_path_factory.mktemp("base"), tokenizer)


@pytest.fixture(scope="module")
def data(tiny_corpus):
    sft = [{"messages": r["messages"]} for r in read_jsonl(tiny_corpus["sft"])][:16]
    pairs = [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in read_jsonl(tiny_corpus["dpo"])][:16]
    rl = [{"prompt": r["prompt"], "answer": r["answer"]} for r in read_jsonl(tiny_corpus["rl"])][:8]
    return {"sft": Dataset.from_list(sft), "dpo": Dataset.from_list(pairs), "rl": Dataset.from_list(rl)}


def run_sft(model_folder, tokenizer, data, out, **overrides):
    args = SFTStageConfig(**common_args(out, assistant_only_loss=True, max_length=128, **overrides))
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    trainer = SFTStageTrainer(model=model, args=args, train_dataset=data["sft"], processing_class=tokenizer)
    trainer.train()
    save_final_model(trainer, tokenizer)
    return trainer


def run_dpo(model_folder, tokenizer, data, out):
    args = DPOStageConfig(**common_args(out, max_length=128))
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    trainer = DPOStageTrainer(model=model, args=args, train_dataset=data["dpo"], processing_class=tokenizer)
    trainer.train()
    save_final_model(trainer, tokenizer)
    return trainer


def length_reward(completions, **kwargs):
    """Differs between the two samples of a prompt, so every GRPO group has an advantage to learn from."""
    return [float(len(completion[0]["content"])) for completion in completions]


def run_grpo(model_folder, tokenizer, data, out, reward_funcs=(accuracy_reward, length_reward)):
    args = GRPOStageConfig(
        **common_args(out, num_generations=2, max_completion_length=8, beta=0.04, learning_rate=1e-3)
    )
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    trainer = GRPOStageTrainer(
        model=model, args=args, train_dataset=data["rl"], processing_class=tokenizer, reward_funcs=list(reward_funcs)
    )
    trainer.train()
    save_final_model(trainer, tokenizer)
    return trainer


def run_reward(model_folder, tokenizer, data, out):
    args = RewardStageConfig(**common_args(out, max_length=128))
    model = AutoModelForSequenceClassification.from_pretrained(model_folder, num_labels=1)
    trainer = RewardStageTrainer(model=model, args=args, train_dataset=data["dpo"], processing_class=tokenizer)
    trainer.train()
    return trainer


def run_pretrain(model_folder, tokenizer, data, out):
    args = PretrainConfig(**common_args(out, eval_strategy="no", eval_on_start=False))
    blocks = Dataset.from_list([{"input_ids": torch.randint(3, len(tokenizer), (32,)).tolist()} for _ in range(8)])
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    trainer = PretrainTrainer(model=model, args=args, train_dataset=blocks, data_collator=PackedBlockCollator())
    trainer.train()
    return trainer


RUNS = {"trainer": run_pretrain, "sft": run_sft, "reward": run_reward, "dpo": run_dpo, "grpo": run_grpo}


@pytest.mark.parametrize("stage", list(RUNS))
def test_mixin_works_under_each_trainer(stage, base_folder, tokenizer, data, tmp_path):
    """A few steps under each trainer: metrics.jsonl and the plot, an atomic checkpoint, weights that moved."""
    before = AutoModelForCausalLM.from_pretrained(base_folder).model.layers[0].mlp.up_proj.weight.clone()
    trainer = RUNS[stage](base_folder, tokenizer, data, tmp_path)

    assert trainer.state.global_step == STEPS
    records = [r for r in read_metrics(tmp_path / METRICS_FILE) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    assert is_complete_checkpoint(tmp_path / f"checkpoint-{STEPS}")
    assert not list(tmp_path.glob(STAGING_PREFIX + "*"))
    after = trainer.accelerator.unwrap_model(trainer.model).model.layers[0].mlp.up_proj.weight
    assert not torch.equal(before, after.detach().cpu())


def test_sft_then_dpo_and_grpo_chain_on_saved_folders(base_folder, tokenizer, data, tmp_path):
    """TRL writes `output_router_logits: false` into every folder it saves; the next trainer must accept it."""
    run_sft(base_folder, tokenizer, data, tmp_path / "sft")
    config = json.loads((tmp_path / "sft" / "config.json").read_text())
    assert config.get("output_router_logits") is False and not config.get("router_aux_loss_coef")
    dpo = run_dpo(tmp_path / "sft", tokenizer, data, tmp_path / "dpo")
    grpo = run_grpo(tmp_path / "sft", tokenizer, data, tmp_path / "grpo")
    assert dpo.state.global_step == grpo.state.global_step == STEPS
    for stage in ("dpo", "grpo"):
        AutoModelForCausalLM.from_pretrained(tmp_path / stage)
    run_sft(tmp_path / "dpo", tokenizer, data, tmp_path / "sft-again")


def test_moe_balance_loss_is_in_the_sft_loss_and_survives_a_chain(tokenizer, data, tmp_path):
    """TRL's fused LM head calls the backbone directly; the balance loss must still reach the trained loss."""
    base = save_base(tmp_path / "moe", tokenizer, use_moe=True, num_experts=4, num_experts_per_tok=2)
    trainer = run_sft(base, tokenizer, data, tmp_path / "sft")
    aux = [r["aux_loss"] for r in read_metrics(tmp_path / "sft" / METRICS_FILE) if "loss" in r]
    assert len(aux) == STEPS and all(value > 0 for value in aux)

    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    coef = model.config.router_aux_loss_coef
    assert coef > 0 and trainer.aux_loss_enabled
    inputs = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        aux_loss = model(**model_inputs, output_router_logits=True).aux_loss
        with_balance = trainer.compute_loss(model, dict(inputs))
        trainer.aux_loss_enabled = False
        lm_only = trainer.compute_loss(model, dict(inputs))
    assert aux_loss > 0
    torch.testing.assert_close(with_balance - lm_only, coef * aux_loss, rtol=1e-4, atol=1e-6)
    run_dpo(tmp_path / "sft", tokenizer, data, tmp_path / "dpo")


def test_saved_folder_tokenizer_loads_without_remote_code(base_folder, tokenizer, data, tmp_path):
    """Loading only the tokenizer of a saved folder must not need (or ask for) the model's remote code."""
    run_sft(base_folder, tokenizer, data, tmp_path)
    script = (
        "import sys; sys.modules['modeling_miniminds'] = None\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "tok = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])\n"
        "print(len(tok), tok.eos_token, tok.chat_template is not None)\n"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(tokenizer)), "<|im_end|>", "True"]
    assert "custom code" not in done.stderr
    loaded = load_tokenizer(tmp_path)  # the project's loader: the registered model type, no prompt
    assert len(loaded) == len(tokenizer)
