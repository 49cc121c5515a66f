"""DPO recipe on an SFT folder: held-out preference accuracy and margin rise while the reference stays frozen, the
guards against what upstream MiniMind users hit (NaN loss, loss stuck at 0.693, bad pairs), and a two-process ZeRO-3
run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_run_card, free_port, stage_args
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from data_process.jsonl import read_jsonl
from recipes.dpo import make_parser
from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.checkpoints import is_complete_checkpoint
from recipes.training.dpo import NonFiniteLossError, build_trainer, dpo
from recipes.training.lifecycle import start_run
from recipes.training.preference import REJECTED_FILE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 20
USER = {"role": "user", "content": "What is 2 plus 3?"}
GOOD = {"role": "assistant", "content": "2 plus 3 equals 5.\nAnswer: 5"}
BAD = {"role": "assistant", "content": "Answer: 6"}


@pytest.fixture(scope="module")
def sft_folder(quick_sft_folder):
    return quick_sft_folder


def recipe_args(model, corpus, out, *overrides, held_out=True):
    eval_sets = ["--eval_dataset_name", Path(corpus["eval"]) / "dpo.jsonl"]
    eval_sets += ["--chat_eval_dataset", Path(corpus["eval"]) / "rl.jsonl"]
    flags = [*(eval_sets if held_out else []), *overrides]
    return stage_args(make_parser(), "dpo_tiny", model, corpus["dpo"], out, *flags)


@pytest.fixture(scope="module")
def trained(sft_folder, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo")
    flags = ["--max_steps", STEPS, "--save_steps", STEPS, "--chat_eval_samples", 20]
    result = dpo(*recipe_args(sft_folder, tiny_corpus, out, *flags))
    return result, out


def test_dpo_raises_held_out_preference_and_reports_task_accuracy(trained, sft_folder):
    """SFT -> DPO on saved folders. Measured (20 steps of 8 pairs, lr 1e-4, beta 0.1): preference accuracy 0 -> 0.9,
    margin 0 -> 1.1, task accuracy (0) and eot_rate (0.3) unchanged. Before training the policy is the reference, so
    every implicit reward is 0: accuracy (chosen strictly above rejected) and margin start at exactly 0."""
    result, out = trained
    before, after = result["before"], result["after"]
    assert set(before) == set(after)
    assert {"preference_accuracy", "margin", "accuracy", "task_accuracy", "eot_rate", "per_family"} <= set(after)
    assert before["preference_accuracy"] == 0 and before["margin"] == 0
    assert_run_card(out, "dpo")
    assert after["preference_accuracy"] >= 0.7 and after["margin"] > 0.5
    assert result["task_regression_warning"] is None and result["stuck_loss_warning"] is None

    saved = json.loads((out / "eval_results.json").read_text())
    assert (
        saved["eval_preference_accuracy"]
        == after["preference_accuracy"]
        == pytest.approx(saved["eval_rewards/accuracies"], abs=1e-4)
    )
    assert saved["eval_margin"] == after["margin"] and saved["eval_task_accuracy"] == after["task_accuracy"]
    assert "eval_preference_accuracy" in json.loads((out / "all_results.json").read_text())
    evals = [r for r in read_metrics(out / METRICS_FILE) if "eval_loss" in r]
    # At the start the sigmoid term is log 2 (policy = reference); dpo_tiny.yaml's sft term adds the chosen replies'
    # cross-entropy on top, so the loss sits above it.
    assert evals[0]["step"] == 0 and evals[0]["eval_loss"] > math.log(2) + 0.1
    assert is_complete_checkpoint(out / f"checkpoint-{STEPS}")

    policy = AutoModelForCausalLM.from_pretrained(out)
    start = AutoModelForCausalLM.from_pretrained(sft_folder)
    assert not torch.equal(policy.model.layers[0].mlp.up_proj.weight, start.model.layers[0].mlp.up_proj.weight)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and json.loads((out / "config.json").read_text())["auto_map"]


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_reference_stays_the_sft_model(use_peft, sft_folder, tiny_corpus, tmp_path):
    """The reference is the SFT folder, frozen: reloaded from config._name_or_path, or the policy with its LoRA
    adapter disabled."""
    flags = ["--max_steps", 3, "--learning_rate", 1e-3] + (["--use_peft", "true", "--lora_r", 4] if use_peft else [])
    script_args, training_args, model_args = recipe_args(sft_folder, tiny_corpus, tmp_path, *flags, held_out=False)
    start_run(training_args)
    trainer, _, _ = build_trainer(script_args, training_args, model_args)
    trainer.train()
    expected = load_file(Path(sft_folder) / "model.safetensors")
    if use_peft:
        base = trainer.model.get_base_model()
        reference = {n.replace(".base_layer", ""): p for n, p in base.named_parameters() if "lora_" not in n}
        adapters = [p for n, p in base.named_parameters() if "lora_B" in n]
        assert adapters and any(p.abs().sum() > 0 for p in adapters)  # the policy moved
    else:
        reference = dict(trainer.ref_model.named_parameters())
        assert not all(torch.equal(p, expected[n]) for n, p in trainer.model.named_parameters())
    assert {n for n in expected if n != "lm_head.weight"} <= set(reference)
    for name in expected:
        if name in reference:
            assert torch.equal(reference[name].detach(), expected[name]), name
    trainer.end()


class PoisonWeights(TrainerCallback):
    """Fills one weight with NaN after `step`, as an fp16 overflow would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.model.layers[0].mlp.up_proj.weight.fill_(float("nan"))


def test_nan_loss_stops_the_run_naming_step_and_batch(sft_folder, tiny_corpus, tmp_path):
    args = recipe_args(sft_folder, tiny_corpus, tmp_path, "--max_steps", 5, "--logging_steps", 1, held_out=False)
    expected = r"DPO loss is nan at step 3, micro-batch 1 \(on process 0; process 0's batch starts with .+\); stopped"
    with pytest.raises(NonFiniteLossError, match=expected):
        dpo(*args, callbacks=[PoisonWeights(2)])


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return path


@pytest.mark.parametrize("cause", ["zero_learning_rate", "truncated_to_the_same_tokens"])
def test_loss_stuck_at_log_2_is_reported_with_its_cause(cause, sft_folder, tiny_corpus, tmp_path):
    # the sigmoid loss alone: dpo_tiny.yaml adds the chosen replies' cross-entropy, which is not log 2
    flags = ["--max_steps", 4, "--logging_steps", 1, "--stuck_loss_steps", 3, "--loss_type", "sigmoid"]
    corpus = dict(tiny_corpus)
    if cause == "zero_learning_rate":
        flags += ["--learning_rate", 0]
        expected = "the learning rate is 0, so the policy stays equal to the reference"
    else:
        shared = "Let me think about this step by step, carefully, before I answer the question. "
        pairs = [
            {
                "chosen": [USER, {"role": "assistant", "content": f"{shared}Answer: {n}"}],
                "rejected": [USER, {"role": "assistant", "content": f"{shared}Answer: {n + 1}"}],
            }
            for n in range(16)
        ]
        corpus["dpo"] = write_pairs(tmp_path / "pairs.jsonl", pairs)
        flags += ["--max_length", 32]
        expected = "16 of 16 training pairs have identical chosen and rejected tokens once cut to max_length=32"
    result = dpo(*recipe_args(sft_folder, corpus, tmp_path / "run", *flags, held_out=False))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / METRICS_FILE) if "loss" in r]
    assert losses == pytest.approx([math.log(2)] * 4, abs=1e-6)
    assert "the DPO loss has stayed at log 2 = 0.693 for 3 steps (steps 1-3)" in result["stuck_loss_warning"]
    assert expected in result["stuck_loss_warning"]


def dpo_cli(*argv):
    command = [sys.executable, str(REPO / "recipes" / "dpo.py"), *map(str, argv)]
    return subprocess.run(
        command,
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_bad_pairs_fail_at_file_line_or_are_skipped_and_counted(sft_folder, tmp_path):
    good = {"chosen": [USER, GOOD], "rejected": [USER, BAD]}
    data = write_pairs(
        tmp_path / "pairs.jsonl",
        [good] * 8 + [{"chosen": [USER, GOOD]}, {"chosen": [USER, GOOD], "rejected": [USER, GOOD]}],
    )
    base = [
        "--config",
        REPO / "recipes" / "configs" / "dpo_tiny.yaml",
        "--model_name_or_path",
        sft_folder,
        "--dataset_name",
        data,
        "--output_dir",
        tmp_path / "out",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]

    failed = dpo_cli(*base)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert lines[-1] == f"error: {data}:9: field 'rejected': missing (keys: chosen)"

    # The loss, beta and a precomputed reference come from the command line as well.
    done = dpo_cli(
        *base,
        "--skip_bad",
        "true",
        "--max_steps",
        1,
        "--loss_type",
        "ipo",
        "--beta",
        0.5,
        "--precompute_ref_log_probs",
        "true",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipped 2 bad preference pairs, written with their reasons to {tmp_path / 'out' / REJECTED_FILE}" in (
        done.stderr
    )
    rejected = list(read_jsonl(tmp_path / "out" / REJECTED_FILE))
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (9, "field 'rejected': missing (keys: chosen)"),
        (10, "chosen and rejected are identical: the pair prefers nothing"),
    ]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_two_process_zero3_run_trains_and_saves_a_loadable_model(sft_folder, tiny_corpus, tmp_path):
    """ZeRO-3 shards policy and reference (TRL wraps the reference in a DeepSpeed inference engine); the chat probe
    generates on both processes (synced) and the final model is gathered into one file."""
    out = tmp_path / "run"
    command = [
        BIN / "accelerate",
        "launch",
        "--config_file",
        "ds_configs/zero3.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        free_port(),
        "recipes/dpo.py",
        "--config",
        "recipes/configs/dpo_tiny.yaml",
        "--model_name_or_path",
        sft_folder,
        "--dataset_name",
        tiny_corpus["dpo"],
        "--eval_dataset_name",
        Path(tiny_corpus["eval"]) / "dpo.jsonl",
        "--max_eval_pairs",
        8,
        "--chat_eval_dataset",
        Path(tiny_corpus["eval"]) / "rl.jsonl",
        "--chat_eval_samples",
        4,
        "--output_dir",
        out,
        "--max_steps",
        2,
        "--save_steps",
        2,
        "--logging_steps",
        1,
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        list(map(str, command)), check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=480
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"

    assert [r["step"] for r in read_metrics(out / METRICS_FILE) if "loss" in r] == [1, 2]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_preference_accuracy", "eval_margin", "eval_task_accuracy"} <= set(results)
    weights = load_file(out / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (512, 128)  # gathered, not a shard
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, 512) and torch.isfinite(logits).all()
