"""The SFT recipe under DeepSpeed ZeRO-2 with 2 CPU processes (gloo, DeepSpeed's CPU accelerator): both processes
train the same weights, and the final folder holds exactly those trained weights and loads through trust_remote_code.
"""

import json
import sys
from pathlib import Path

import torch
from helpers import free_port
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from two_process import assert_loads_whole, assert_saved_as_trained, launch, short_run_args

from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.checkpoints import is_complete_checkpoint

STEPS = 3


def test_deepspeed_zero2_two_processes_train_and_save(tiny_corpus, tiny_tokenizer_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    base = tmp_path / "base"
    torch.manual_seed(0)
    MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer))).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "sft"
    launch(
        [
            Path(sys.executable).parent / "deepspeed",
            "--num_gpus",
            "2",
            "--master_port",
            free_port(),
            "recipes/sft.py",
            "--deepspeed",
            "ds_configs/zero2.json",
            "--use_cpu",
            "true",
            "--config",
            "recipes/configs/sft_tiny.yaml",
            "--model_name_or_path",
            base,
            "--dataset_name",
            tiny_corpus["sft"],
            "--eval_dataset_name",
            tiny_corpus["eval"] / "sft.jsonl",
            *short_run_args(out, STEPS),
            "--per_device_train_batch_size",
            "2",
            "--report_to",
            "none",
        ],
        "deepspeed sft",
    )

    records = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]
    checkpoint = out / f"checkpoint-{STEPS}"
    assert is_complete_checkpoint(checkpoint)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}  # both ranks trained
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")

    trained = assert_saved_as_trained(out, checkpoint)
    start = load_file(base / "model.safetensors")
    unchanged = [name for name, tensor in start.items() if torch.equal(tensor, trained[name])]
    assert not unchanged, f"not trained: {unchanged}"
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert_loads_whole(model, trained)
