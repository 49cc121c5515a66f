"""PPO (TRL removed its trainer; the math is tested in test_ppo_math.py), real runs from a tiny SFT folder: the
held-out reward rises with the KL to the reference in bounds, on a reward model and on reward functions; a raising
reward function is reported by name; the critic learns at its own rate when asked; two processes end with identical
weights, under DDP and ZeRO-3; resume repeats the uninterrupted run; LoRA uses its base as the reference; Ctrl-C saves
a checkpoint and the run resumes."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_run_card, free_port, stage_args
from matplotlib.image import imread
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from modeling_miniminds.tokenizer import load_tokenizer
from recipes.ppo import main, make_parser
from recipes.training.callbacks import METRICS_FILE, PLOT_FILE, read_metrics, reward_curves
from recipes.training.checkpoints import is_complete_checkpoint
from recipes.training.ppo import ppo
from recipes.training.ppo_trainer import PPOTrainer
from recipes.training.reward_model import load_reward_model
from recipes.training.rl import GuardedReward, read_rl_records

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "configs" / "ppo_tiny.yaml"
KL_LIMIT = 6.0  # nats per held-out reply, summed over its tokens (about 16 tokens)


def test_a_failing_reward_function_loses_only_its_bad_samples(caplog):
    def picky(prompts=None, completions=None, **kwargs):
        if any("boom" in c for c in completions):
            raise ZeroDivisionError("boom")
        return [None if c == "skip" else 1.0 for c in completions]

    guarded = GuardedReward(picky)
    with caplog.at_level(logging.WARNING):
        assert guarded(prompts=["q"] * 3, completions=["ok", "boom", "skip"]) == [1.0, None, None]
    assert guarded.take_failures() == 2 and guarded.take_failures() == 0
    assert "'picky' raised ZeroDivisionError: boom" in caplog.text


# Real runs from a tiny SFT folder


def step_records(out: Path) -> list[dict]:
    """The metrics.jsonl records of PPO steps (the Trainer adds one with the run's totals at the end)."""
    return [r for r in read_metrics(out / METRICS_FILE) if "reward" in r]


@pytest.fixture(scope="module")
def sft_folder(tiny_sft_folder):
    return tiny_sft_folder


def ppo_args(sft_folder, corpus, out, *overrides):
    held_out = ["--chat_eval_dataset", Path(corpus["eval"]) / "rl.jsonl", "--chat_eval_samples", 16]
    sizes = ["--chat_eval_max_new_tokens", 24, "--rollout_batch_size", 8, "--max_completion_length", 24]
    return stage_args(make_parser(), "ppo_tiny", sft_folder, corpus["rl"], out, *held_out, *sizes, *overrides)


def test_ppo_on_a_reward_model_raises_the_held_out_reward(sft_folder, tiny_reward_folder, tiny_corpus, tmp_path):
    flags = [
        "--reward_model_name_or_path",
        tiny_reward_folder,
        "--reward_funcs",
        "none",
        "--max_steps",
        8,
        "--save_steps",
        8,
        "--learning_rate",
        2e-4,
        "--rollout_batch_size",
        16,
    ]
    result = ppo(*ppo_args(sft_folder, tiny_corpus, tmp_path, *flags))
    before, after = result["before"], result["after"]
    assert set(before) >= {"reward", "reward/reward_model", "accuracy", "task_accuracy", "eot_rate", "reply_tokens"}
    assert result["gains"]["reply_tokens"]["n"] == len(after["items"]["reward"]) and after["reply_tokens"] > 0
    assert after["reward"] > before["reward"] + 0.3, (before["reward"], after["reward"])
    assert 0 < after["kl"] < KL_LIMIT
    records = step_records(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 9))
    for key in (
        "reward",
        "rewards/reward_model",
        "kl",
        "entropy",
        "clipfrac",
        "value_loss",
        "explained_variance",
        "response_length",
        "generate_seconds",
        "update_seconds",
        "generate_share",
        "learning_rate",
    ):
        assert all(key in r for r in records), key
    assert is_complete_checkpoint(tmp_path / "checkpoint-8") and not list(tmp_path.glob(".tmp-*"))
    assert json.loads((tmp_path / "all_results.json").read_text())["eval_kl"] == after["kl"]
    # below loss and learning rate, the training reward per step (summed and per source) and the KL
    curves = reward_curves(read_metrics(tmp_path / METRICS_FILE))
    assert list(curves) == ["reward", "reward_model"] and len(curves["reward"]) == len(records)
    assert imread(tmp_path / PLOT_FILE).shape[0] == 800
    AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)  # a complete folder
    assert_run_card(tmp_path, "ppo")
    start, end = load_file(sft_folder / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert start.keys() == end.keys() and any(not torch.equal(start[k], end[k]) for k in start)


def test_ppo_on_reward_functions_reports_a_failing_one_by_name(sft_folder, tiny_corpus, tmp_path, caplog):
    """The function path drives a run, while a function that raises on some batches and returns None for a sample
    on the others costs only those samples, counted under its name."""
    args = ppo_args(
        sft_folder,
        tiny_corpus,
        tmp_path,
        "--reward_funcs",
        "format",
        "--max_steps",
        6,
        "--save_steps",
        100,
        "--learning_rate",
        3e-4,
    )
    script_args, training_args, model_args = args
    tokenizer = load_tokenizer(sft_folder)
    calls = []

    def flaky(prompts=None, completions=None, **kwargs):
        calls.append(len(completions))
        if len(calls) % 2:
            raise RuntimeError("flaky reward service down")
        return [None] + [0.0] * (len(completions) - 1)

    from recipes.training.lifecycle import start_run
    from recipes.training.rl import build_reward_functions

    funcs = build_reward_functions(script_args, model_args, tokenizer) + [GuardedReward(flaky)]
    start_run(training_args)
    policy = AutoModelForCausalLM.from_pretrained(sft_folder)
    reference = AutoModelForCausalLM.from_pretrained(sft_folder)
    critic = load_reward_model(model_args, tokenizer)
    records = read_rl_records(tiny_corpus["rl"])
    heldout = read_rl_records(Path(tiny_corpus["eval"]) / "rl.jsonl", limit=16)
    trainer = PPOTrainer(
        training_args,
        policy,
        critic,
        funcs,
        tokenizer,
        records,
        ref_model=reference,
        eval_records=heldout,
        eval_max_new_tokens=24,
    )
    with caplog.at_level(logging.WARNING):
        trainer.train()
    after = trainer.heldout_metrics()
    assert "reward function 'flaky' raised RuntimeError: flaky reward service down" in caplog.text
    steps = [h for h in trainer.state.log_history if "reward" in h]
    failures = [h["rewards/flaky/failures"] for h in steps]
    assert len(failures) == 6 and sum(failures) > 0 and all(f >= 1 for f in failures)
    assert all(h["rewards/format"] is not None for h in steps)
    assert 0 < after["kl"] < KL_LIMIT  # the policy moved off the reference


def test_the_critic_learns_at_its_own_rate(sft_folder, tiny_corpus, tmp_path):
    """`--critic_learning_rate` puts every critic parameter, and only those, in groups at that rate; the schedule
    scales both rates alike."""
    _, training_args, model_args = ppo_args(
        sft_folder, tiny_corpus, tmp_path, "--reward_funcs", "format", "--critic_learning_rate", 1e-3
    )
    training_args.lr_scheduler_type, training_args.warmup_steps = "linear", 0
    tokenizer = load_tokenizer(sft_folder)
    policy, critic = AutoModelForCausalLM.from_pretrained(sft_folder), load_reward_model(model_args, tokenizer)
    records = read_rl_records(tiny_corpus["rl"])
    reference = AutoModelForCausalLM.from_pretrained(sft_folder)
    trainer = PPOTrainer(training_args, policy, critic, [], tokenizer, records, ref_model=reference)
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    rate = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    grouped = [id(p) for group in trainer.optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(rate) == len([p for p in trainer.model.parameters() if p.requires_grad])
    assert {rate[id(p)] for p in critic.parameters()} == {1e-3}
    assert {rate[id(p)] for p in policy.parameters()} == {training_args.learning_rate}
    trainer.lr_scheduler.step()
    trainer.lr_scheduler.step()
    assert sorted(set(trainer.lr_scheduler.get_last_lr())) == pytest.approx([training_args.learning_rate / 2, 5e-4])


def test_resume_repeats_the_uninterrupted_run(sft_folder, tiny_corpus, tmp_path):
    flags = [
        "--reward_funcs",
        "format",
        "--max_steps",
        4,
        "--save_steps",
        2,
        "--chat_eval_samples",
        4,
        "--num_ppo_epochs",
        1,
    ]
    whole = tmp_path / "whole"
    ppo(*ppo_args(sft_folder, tiny_corpus, whole, *flags))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    # as in the folder of a run that stopped: its records past the checkpoint's step are dropped on resume
    shutil.copy(whole / METRICS_FILE, resumed / METRICS_FILE)
    result = ppo(*ppo_args(sft_folder, tiny_corpus, resumed, *flags, "--resume_from_checkpoint", "auto"))
    assert result["steps"] == 4
    assert [r["step"] for r in step_records(resumed)] == [1, 2, 3, 4]
    first, second = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=0, msg=name)


def test_lora_actor_uses_its_base_as_the_reference(sft_folder, tiny_corpus, tmp_path):
    """With activation checkpointing too, which generation turns off and back on around every rollout."""
    result = ppo(
        *ppo_args(
            sft_folder,
            tiny_corpus,
            tmp_path,
            "--reward_funcs",
            "format",
            "--max_steps",
            2,
            "--use_peft",
            "true",
            "--lora_r",
            4,
            "--learning_rate",
            1e-3,
            "--chat_eval_samples",
            4,
            "--gradient_checkpointing",
            "true",
        )
    )
    # the adapter moved off its base: the KL estimate (k1, a mean log ratio over 4 sampled replies) is no longer 0,
    # and may come out below 0 on so few replies (-0.315 after the digit split)
    assert result["before"]["reward"] is not None and result["after"]["kl"] != 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)  # merged: a plain model folder
    assert not any("lora" in name for name in model.state_dict())


LAUNCH_CONFIGS = {"ddp": "ds_configs/ddp.yaml", "zero3": "ds_configs/zero3.yaml"}


@pytest.fixture(scope="module")
def two_process_runs(sft_folder, tiny_corpus, tmp_path_factory):
    """The same 2-step PPO run launched by accelerate on 2 CPU processes, under DDP and under DeepSpeed ZeRO-3."""
    runs = {}
    for name, config in LAUNCH_CONFIGS.items():
        out = tmp_path_factory.mktemp(f"ppo-{name}")
        command = [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            "--config_file",
            config,
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            "recipes/ppo.py",
            "--config",
            str(CONFIG),
            "--model_name_or_path",
            str(sft_folder),
            "--dataset_name",
            str(tiny_corpus["rl"]),
            "--reward_funcs",
            "format",
            "--rollout_batch_size",
            "8",
            "--max_completion_length",
            "16",
            "--max_steps",
            "2",
            "--save_steps",
            "2",
            "--critic_learning_rate",
            "1e-3",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
        done = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
        assert done.returncode == 0, f"{name}: {done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        runs[name] = out
    return runs


def test_two_processes_end_with_identical_weights(two_process_runs):
    out = two_process_runs["ddp"]
    fingerprints = json.loads((out / "all_results.json").read_text())["train_weights_sha256_per_process"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert is_complete_checkpoint(out / "checkpoint-2")
    saved = {p.name for p in (out / "checkpoint-2").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "critic.safetensors"} <= saved  # both processes took part


def test_zero3_shards_the_same_run(two_process_runs):
    """ZeRO-3 gathers the actor for generation and the final save, and trains as DDP does."""
    ddp, zero3 = (step_records(two_process_runs[name]) for name in ("ddp", "zero3"))
    for key in ("reward", "loss", "kl"):
        assert [r[key] for r in zero3] == pytest.approx([r[key] for r in ddp], rel=1e-3, abs=1e-4), key
    assert is_complete_checkpoint(two_process_runs["zero3"] / "checkpoint-2")
    model = AutoModelForCausalLM.from_pretrained(two_process_runs["zero3"], trust_remote_code=True)
    reference = AutoModelForCausalLM.from_pretrained(two_process_runs["ddp"], trust_remote_code=True)
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)


def test_cli_errors_name_the_problem(sft_folder, tiny_corpus, tmp_path, capsys):
    base = ["--model_name_or_path", str(sft_folder), "--output_dir", str(tmp_path), "--report_to", "none"]
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args_and_config(base + ["--kl_coeff", "0.1"])
    assert exit_info.value.code == 2 and "--kl_coef" in capsys.readouterr().err
    args = make_parser().parse_args_and_config(base + ["--dataset_name", str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit) as exit_info:
        main(*args)
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.startswith("error:") and "missing.jsonl" in err
    # a DeepSpeed config with its own optimizer would leave the critic at the actor's rate without a word
    ds_config = tmp_path / "with_optimizer.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}))
    flags = ["--dataset_name", str(tiny_corpus["rl"]), "--deepspeed", str(ds_config), "--critic_learning_rate", "1e-3"]
    with pytest.raises(SystemExit) as exit_info:
        main(*make_parser().parse_args_and_config(base + flags))
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.startswith("error:") and "--critic_learning_rate" in err


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes(sft_folder, tiny_corpus, tmp_path):
    argv = [
        "--config",
        CONFIG,
        "--model_name_or_path",
        sft_folder,
        "--dataset_name",
        tiny_corpus["rl"],
        "--reward_funcs",
        "format",
        "--rollout_batch_size",
        8,
        "--max_completion_length",
        16,
        "--output_dir",
        tmp_path,
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--save_steps",
        1000,
    ]
    command = [sys.executable, str(REPO / "recipes" / "ppo.py"), *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*command, "--max_steps", "2000"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not read_metrics(tmp_path / METRICS_FILE):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    checkpoints = sorted(tmp_path.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and is_complete_checkpoint(checkpoints[0])
    step = int(checkpoints[0].name.split("-")[1])
    assert f"interrupted at step {step}; checkpoint saved to {checkpoints[0]}" in stderr
    assert stderr.rstrip().endswith("--resume_from_checkpoint auto") and not (tmp_path / "model.safetensors").exists()
    resumed = subprocess.run(
        [*command, "--max_steps", str(step + 1), "--resume_from_checkpoint", "auto"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in step_records(tmp_path)] == list(range(1, step + 2))
    assert (tmp_path / "model.safetensors").exists()
