"""Shared fixtures: a tiny built-in corpus and a tokenizer trained on it, built once per test session.

The environment is set before any HF library is imported: no Hub access, and a per-session datasets cache
so cached Arrow files from earlier runs can never stand in for fresh results.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
if "HF_DATASETS_CACHE" not in os.environ:
    _DATASETS_CACHE = tempfile.mkdtemp(prefix="miniminds-datasets-cache-")
    os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE
    atexit.register(shutil.rmtree, _DATASETS_CACHE, ignore_errors=True)

import pytest  # noqa: E402

TINY_VOCAB = 512


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
