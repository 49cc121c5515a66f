"""Named model sizes, and `get_config` to build a config from a preset name or a file."""

import json
from pathlib import Path

from .configuration_minimind import MiniMindConfig

# Upstream MiniMind sizes. Parameter counts are with the default 6400-token vocabulary and tied embeddings.
PRESETS: dict[str, dict] = {
    # ~1.3M parameters: unit tests and the CPU demo.
    "minimind-tiny": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048
    ),
    # ~0.5M: half minimind-tiny's width, the student the CPU demo distils minimind-tiny into.
    "minimind-micro": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048
    ),
    # ~26M: upstream MiniMind2-Small (width 512, 8 layers, 2 KV heads, SwiGLU width 8/3 * hidden).
    "minimind-26m": dict(
        hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1408
    ),
    # ~64M: the current upstream dense model and the MiniMindConfig defaults.
    "minimind-64m": dict(),
    # ~104M: upstream MiniMind2 (width 768, 16 layers, 2 KV heads).
    "minimind-104m": dict(num_hidden_layers=16, num_key_value_heads=2, intermediate_size=2048),
    # ~145M in all, ~65M active per token: upstream MiniMind2-MoE (width 640, 4 routed experts, top-1, one shared).
    # Top-1 weights are left unnormalised so the router also learns from the LM loss.
    "minimind-moe": dict(
        hidden_size=640,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=1728,
        use_moe=True,
        num_experts=4,
        num_experts_per_tok=1,
        n_shared_experts=1,
        norm_topk_prob=False,
    ),
}
DEFAULT_PRESET = "minimind-64m"


def get_config(name_or_path: str | Path = DEFAULT_PRESET, **overrides) -> MiniMindConfig:
    """A preset name, a `config.json` (MiniMinds or upstream MiniMind) or a model folder; `overrides` win."""
    if str(name_or_path) in PRESETS:
        return MiniMindConfig(**{**PRESETS[str(name_or_path)], **overrides})
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(
            f"Unknown model config {str(name_or_path)!r}: expected one of {sorted(PRESETS)} or a path to a "
            "config.json or a model folder."
        )
    values = json.loads(path.read_text(encoding="utf-8"))
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        values.pop(key, None)
    return MiniMindConfig(**{**values, **overrides})
