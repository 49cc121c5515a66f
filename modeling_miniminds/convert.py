"""Conversion between a dense MiniMind and transformers' Qwen3: the same weights under the same names."""

from transformers import Qwen3Config, Qwen3ForCausalLM

from .configuration_minimind import MiniMindConfig
from .modeling_minimind import MiniMindForCausalLM

SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_dropout",
    "initializer_range",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


def to_qwen3_config(config: MiniMindConfig) -> Qwen3Config:
    if config.use_moe or not config.use_qk_norm:
        raise ValueError(
            "Only dense MiniMind models with q/k-norm have a Qwen3 equivalent "
            f"(got use_moe={config.use_moe}, use_qk_norm={config.use_qk_norm})."
        )
    return Qwen3Config(**{name: getattr(config, name) for name in SHARED_FIELDS}, attention_bias=False)


def to_qwen3(model: MiniMindForCausalLM) -> Qwen3ForCausalLM:
    """A `Qwen3ForCausalLM` holding a copy of the MiniMind weights (serves with any Qwen3-aware tool)."""
    qwen3 = Qwen3ForCausalLM(to_qwen3_config(model.config)).to(model.dtype)
    qwen3.load_state_dict(model.state_dict(), strict=True)
    return qwen3


def from_qwen3(model: Qwen3ForCausalLM) -> MiniMindForCausalLM:
    config = MiniMindConfig(**{name: getattr(model.config, name) for name in SHARED_FIELDS}, use_qk_norm=True)
    minimind = MiniMindForCausalLM(config).to(model.dtype)
    minimind.load_state_dict(model.state_dict(), strict=True)
    return minimind
