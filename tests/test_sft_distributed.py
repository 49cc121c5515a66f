"""The SFT recipe under DeepSpeed ZeRO-2 with 2 CPU processes (gloo, DeepSpeed's CPU accelerator): both processes
train, and the final folder is a complete model that loads through trust_remote_code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import free_port
from transformers import AutoModelForCausalLM

from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.checkpoints import is_complete_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


def test_deepspeed_zero2_two_processes_train_and_save(tiny_corpus, tiny_tokenizer_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    base = tmp_path / "base"
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "sft"
    command = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "recipes/sft.py",
        "--deepspeed",
        "ds_configs/zero2.json",
        "--use_cpu",
        "true",
        "--config",
        "recipes/configs/sft_tiny.yaml",
        "--model_name_or_path",
        str(base),
        "--dataset_name",
        str(tiny_corpus["sft"]),
        "--eval_dataset_name",
        str(tiny_corpus["eval"] / "sft.jsonl"),
        "--output_dir",
        str(out),
        "--max_steps",
        str(STEPS),
        "--save_steps",
        str(STEPS),
        "--eval_steps",
        str(STEPS),
        "--logging_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"

    records = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]
    checkpoint = out / f"checkpoint-{STEPS}"
    assert is_complete_checkpoint(checkpoint)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}  # both ranks trained
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, len(tokenizer)) and torch.isfinite(logits).all()
