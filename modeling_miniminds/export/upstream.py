"""Upstream MiniMind `.pth` checkpoints (`torch.save(model.state_dict())`) into a MiniMinds model folder.

    python -m modeling_miniminds.export.convert from-upstream full_sft_512.pth runs/upstream \
        --config minimind-26m --tokenizer ../minimind/model

Every key must be accounted for: a checkpoint that does not match the config is refused with the keys that differ.
"""

from pathlib import Path

import torch

from ..modeling_minimind import MiniMindForCausalLM
from ..presets import get_config
from .qwen3 import copy_tokenizer


def load_upstream_state_dict(checkpoint: Path) -> dict:
    """Tensors of an upstream `.pth` (a plain state dict; `module.` prefixes from DDP dropped), loaded safely."""
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{checkpoint}: expected a state dict of tensors (torch.save(model.state_dict()))")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def first_keys(keys: list[str], shown: int = 5) -> str:
    return f"{keys[:shown]}{'...' if len(keys) > shown else ''}"


def import_upstream(checkpoint: Path, output: Path, config: str, tokenizer_dir: Path | None) -> int:
    """Upstream MiniMind weights into a MiniMinds folder, every key accounted for (strict); returns the tensor count."""
    model = MiniMindForCausalLM(get_config(config))
    state_dict = load_upstream_state_dict(checkpoint)
    if model.config.tie_word_embeddings:
        state_dict.setdefault("lm_head.weight", state_dict.get("model.embed_tokens.weight"))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint} does not match config {config}: missing {first_keys(missing)}, "
            f"unexpected {first_keys(unexpected)}"
        )
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"{checkpoint}: {key} has shape {tuple(tensor.shape)}, config {config} expects "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)
    model.save_pretrained(output)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, output)
    return len(state_dict)
