"""The pretraining recipe under each launcher with 2 CPU processes (gloo; DeepSpeed on its CPU accelerator).

Each run trains 3 steps and saves; the tests check that both processes took part (tokens seen = 2 x batch),
that the checkpoint and the final model are complete, that the final model holds the trained weights (the checkpoint's
and, under DeepSpeed, the fp32 master weights of both ranks' ZeRO partitions) and loads whole (gathered under ZeRO-3).
The accelerate DDP run leaves out `--use_cpu true`, as a newcomer would on a machine without GPUs: it used to run two
independent trainings into one folder, and must now train as one distributed run on the CPU.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from two_process import assert_loads_whole, assert_saved_as_trained, launch, short_run_args

from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.checkpoints import is_complete_checkpoint

BIN = Path(sys.executable).parent
STEPS, BATCH, BLOCK, WORLD = 3, 4, 64, 2


def launcher(name, port):
    return {
        "deepspeed-zero2": [
            BIN / "deepspeed",
            "--num_gpus",
            str(WORLD),
            "--master_port",
            port,
            "recipes/pretrain.py",
            "--deepspeed",
            "ds_configs/zero2.json",
        ],
        "torchrun-zero3": [
            BIN / "torchrun",
            "--nproc_per_node",
            str(WORLD),
            "--master_port",
            port,
            "recipes/pretrain.py",
            "--deepspeed",
            "ds_configs/zero3.json",
        ],
        "accelerate-ddp": [
            BIN / "accelerate",
            "launch",
            "--config_file",
            "ds_configs/ddp.yaml",
            "--num_processes",
            str(WORLD),
            "--main_process_port",
            port,
            "recipes/pretrain.py",
        ],
        "accelerate-zero3": [
            BIN / "accelerate",
            "launch",
            "--config_file",
            "ds_configs/zero3.yaml",
            "--num_processes",
            str(WORLD),
            "--main_process_port",
            port,
            "recipes/pretrain.py",
        ],
    }[name]


@pytest.fixture(scope="module")
def runs(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory):
    """Run each launcher once (lazily) and return its output folder."""
    done = {}

    def run(name):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            recipe_args = [
                "--config",
                "recipes/configs/pretrain_tiny.yaml",
                "--dataset_name",
                tiny_corpus["pretrain"],
                "--tokenizer_name_or_path",
                tiny_tokenizer_dir,
                *short_run_args(out, STEPS),
                "--per_device_train_batch_size",
                str(BATCH),
                "--block_size",
                str(BLOCK),
            ]
            if name != "accelerate-ddp":
                recipe_args += ["--use_cpu", "true"]
            log = launch(launcher(name, free_port()) + recipe_args, name)
            (out / "launcher.log").write_text(log, encoding="utf-8")
            done[name] = out
        return done[name]

    return run


def train_records(out):
    return [r for r in read_metrics(out / METRICS_FILE) if "loss" in r]


@pytest.mark.parametrize("name", ["deepspeed-zero2", "torchrun-zero3", "accelerate-ddp", "accelerate-zero3"])
def test_two_process_run_saves_a_loadable_model(name, runs, tiny_tokenizer_dir):
    out = runs(name)
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["num_input_tokens_seen"] == STEPS * WORLD * BATCH * BLOCK  # both processes trained
    evals = [r["eval_loss"] for r in read_metrics(out / METRICS_FILE) if "eval_loss" in r]
    assert evals[-1] < evals[0]

    assert is_complete_checkpoint(out / f"checkpoint-{STEPS}")
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / f"checkpoint-{STEPS}").iterdir()}
    weights = assert_saved_as_trained(out, out / f"checkpoint-{STEPS}")
    assert weights["model.embed_tokens.weight"].shape == (512, 128)  # gathered, not a ZeRO-3 shard
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert_loads_whole(model, weights)


def test_ddp_and_zero2_train_the_same_model(runs):
    """ZeRO-2 only shards optimizer state and gradients: from the same initial weights and data it must follow
    plain DDP's loss curve and end at the same weights."""
    ddp, zero2 = train_records(runs("accelerate-ddp")), train_records(runs("deepspeed-zero2"))
    # Every parameter takes part in every step, so DDP is told not to search for unused ones (it warned each run).
    assert "find_unused_parameters" not in (runs("accelerate-ddp") / "launcher.log").read_text(encoding="utf-8")
    assert [r["step"] for r in ddp] == [r["step"] for r in zero2] == [1, 2, 3]
    for a, b in zip(ddp, zero2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    ddp_weights = load_file(runs("accelerate-ddp") / "model.safetensors")
    zero2_weights = load_file(runs("deepspeed-zero2") / "model.safetensors")
    assert ddp_weights.keys() <= zero2_weights.keys()  # DeepSpeed also writes the tied lm_head
    for name, tensor in ddp_weights.items():  # apart 6e-8 here; a step on one rank's gradients alone moves ~lr
        torch.testing.assert_close(zero2_weights[name], tensor, atol=1e-5, rtol=0, msg=name)
