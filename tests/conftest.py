"""Shared fixtures: a tiny built-in corpus and a tokenizer trained on it, built once per test session.

Tests marked `slow` (they need an optional extra, such as llama.cpp for the GGUF export) are skipped unless pytest
gets `--slow`, which `make test-all` passes; `make test` stays as fast as it was.

The environment is set before any HF library is imported: no Hub access, and a per-session datasets cache
so cached Arrow files from earlier runs can never stand in for fresh results.

`make test` runs the tests in 2 pytest-xdist workers (`-n 2`; `make test ARGS=-n0` runs them in one process). Each
worker is its own session, so each builds its own session fixtures and gets its own datasets and remote-code module
caches (two workers copying the same `trust_remote_code` module into one shared cache can each import the other's
half-written copy).
"""

import atexit
import os
import shutil
import sys
import tempfile

import pytest


def own_cache(variable: str, prefix: str) -> None:
    """Point `variable` at a new folder for this pytest process, removed at exit, unless the caller chose one. A
    folder that another pytest process made so (xdist's controller, whose environment its workers inherit) is not
    shared: each worker makes its own."""
    current = os.environ.get(variable)
    if current is not None and not os.path.basename(current).startswith(prefix):
        return
    path = tempfile.mkdtemp(prefix=prefix)
    os.environ[variable] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
own_cache("HF_DATASETS_CACHE", "miniminds-datasets-cache-")
own_cache("HF_MODULES_CACHE", "miniminds-modules-cache-")
# DeepSpeed compiles its CPU shared-memory op on first use (about a minute on 2 cores). In the shared
# ~/.cache/torch_extensions each checkout's venv writes a different build command, so every other run rebuilt it;
# one folder per venv keeps the build.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))

TINY_VOCAB = 512


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow (what `make test-all` does)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs an optional extra or minutes of CPU; runs with --slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --slow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Paths from data_process.synth.build_corpus(size="tiny", seed=0): pretrain, sft, dpo, rl, eval (folder)."""
    from data_process.synth import build_corpus

    return build_corpus(tmp_path_factory.mktemp("corpus"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_corpus, tmp_path_factory):
    """Folder of a 512-token byte-level BPE tokenizer trained on the tiny corpus (AutoTokenizer loads it)."""
    from data_process.loading import iter_texts
    from modeling_miniminds.tokenizer import train_tokenizer

    output_dir = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(iter_texts([tiny_corpus["pretrain"], tiny_corpus["sft"]]), output_dir, vocab_size=TINY_VOCAB)
    return output_dir


def train_tiny_sft(corpus, tokenizer_dir, out, steps: int):
    """A tiny random MiniMind trained `steps` steps on the tiny SFT data, saved as the SFT stage saves (complete
    folder, TRL's config keys), so later stages start from a folder as they do after SFT."""
    import torch
    from datasets import Dataset

    from data_process.jsonl import read_jsonl
    from modeling_miniminds import MiniMindForCausalLM, get_config
    from modeling_miniminds.tokenizer import load_tokenizer
    from recipes.training.args import SFTStageConfig
    from recipes.training.models import save_final_model
    from recipes.training.trainer import SFTStageTrainer

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_config("minimind-tiny", vocab_size=len(tokenizer)))
    data = Dataset.from_list([{"messages": r["messages"]} for r in read_jsonl(corpus["sft"])])
    args = SFTStageConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_length=128,
        assistant_only_loss=True,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = SFTStageTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    save_final_model(trainer, tokenizer)
    return out


@pytest.fixture(scope="session")
def quick_sft_folder(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory):
    """A quick "SFT" model (30 steps): enough for DPO and GRPO to move held-out numbers in a few steps."""
    return train_tiny_sft(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory.mktemp("sft"), steps=30)


@pytest.fixture(scope="session")
def format_sft_folder(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory):
    """An SFT model (80 steps) that does not yet end its greedy replies on an answer line but samples one now and
    then: room for GRPO's format reward to move it (the 60-step model's replies rarely end at all)."""
    return train_tiny_sft(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory.mktemp("format-sft"), steps=80)


@pytest.fixture(scope="session")
def tiny_sft_folder(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory):
    """An RL starting point (200 steps): most greedy replies end their turn."""
    return train_tiny_sft(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory.mktemp("rl-sft"), steps=200)


@pytest.fixture(scope="session")
def tiny_reward_folder(tiny_sft_folder, tiny_corpus, tmp_path_factory):
    """A reward model trained 30 steps on the tiny preference pairs, from `tiny_sft_folder`."""
    from pathlib import Path

    from recipes.training.cli import RecipeParser
    from recipes.training.preference import PreferenceScriptArguments
    from recipes.training.reward import (
        RewardModelArguments,
        RewardTrainingConfig,
        reward,
    )

    out = tmp_path_factory.mktemp("rl-reward")
    config = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "reward_tiny.yaml"
    argv = [
        "--config",
        str(config),
        "--model_name_or_path",
        str(tiny_sft_folder),
        "--dataset_name",
        str(tiny_corpus["dpo"]),
        "--output_dir",
        str(out),
        "--max_steps",
        "30",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--eval_strategy",
        "no",
    ]
    parser = RecipeParser((PreferenceScriptArguments, RewardTrainingConfig, RewardModelArguments))
    reward(*parser.parse_args_and_config(argv))
    return out
