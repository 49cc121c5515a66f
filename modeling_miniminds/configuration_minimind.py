"""MiniMind configuration: the Qwen3 field names, plus q/k-norm and mixture-of-experts switches.

This file imports only torch-free transformers pieces so that it can be copied next to saved weights and loaded with
`trust_remote_code=True` by people who never installed MiniMinds.
"""

import math
from typing import ClassVar

from transformers import PretrainedConfig

# Written into every saved config so a folder loads through each Auto class with `trust_remote_code=True`.
AUTO_MAP = {
    "AutoConfig": "configuration_minimind.MiniMindConfig",
    "AutoModel": "modeling_minimind.MiniMindModel",
    "AutoModelForCausalLM": "modeling_minimind.MiniMindForCausalLM",
    "AutoModelForSequenceClassification": "modeling_minimind.MiniMindForSequenceClassification",
}
# Upstream keys with no meaning here: the attention backend is chosen by `attn_implementation`, routing is always softmax.
IGNORED_LEGACY_KEYS = ("flash_attn", "scoring_func", "seq_aux", "inference_rope_scaling")


def default_intermediate_size(hidden_size: int) -> int:
    """SwiGLU width used by upstream MiniMind: hidden * pi, rounded up to a multiple of 64."""
    return math.ceil(hidden_size * math.pi / 64) * 64


class MiniMindConfig(PretrainedConfig):
    r"""
    Configuration of a MiniMind model. Defaults are the upstream MiniMind dense model (about 64M parameters).

    Args:
        vocab_size (`int`, defaults to 6400): tokens in the vocabulary.
        hidden_size (`int`, defaults to 768): width of the residual stream.
        intermediate_size (`int`, *optional*): SwiGLU width; defaults to `ceil(hidden_size * pi / 64) * 64`.
        num_hidden_layers (`int`, defaults to 8): decoder layers.
        num_attention_heads (`int`, defaults to 8): query heads.
        num_key_value_heads (`int`, defaults to 4): key/value heads (grouped-query attention); must divide the query heads.
        head_dim (`int`, *optional*): per-head width; defaults to `hidden_size // num_attention_heads`.
        hidden_act (`str`, defaults to `"silu"`): activation inside the gated MLP.
        max_position_embeddings (`int`, defaults to 32768): longest sequence the RoPE tables are meant for.
        rms_norm_eps (`float`, defaults to 1e-6): RMSNorm epsilon.
        rope_parameters (`dict`, *optional*): `{"rope_type": "default" | "yarn" | ..., "rope_theta": ...}`; legacy
            `rope_theta` / `rope_scaling` keys are folded into it.
        use_qk_norm (`bool`, defaults to `True`): RMSNorm on each query and key head before RoPE (Qwen3 style).
        tie_word_embeddings (`bool`, defaults to `True`): share the input embedding with the LM head.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities while training.
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear and embedding weights.
        use_moe (`bool`, defaults to `False`): replace each MLP with a mixture of experts.
        num_experts (`int`, defaults to 4): routed experts per MoE layer.
        num_experts_per_tok (`int`, defaults to 1): experts each token is sent to (top-k).
        moe_intermediate_size (`int`, *optional*): width of each expert; defaults to `intermediate_size`.
        n_shared_experts (`int`, defaults to 0): experts every token passes through, added to the routed output.
        norm_topk_prob (`bool`, defaults to `True`): renormalise the chosen experts' routing weights to sum to 1, as
            upstream MiniMind does by default. With k = 1 every weight becomes exactly 1 and the router learns only from
            the balance loss, so the `minimind-moe` preset turns it off. MiniMind2-era configs (which say
            `n_routed_experts`) renormalised only for k > 1 and load that way.
        output_router_logits (`bool`, *optional*): return each MoE layer's router logits and add
            `router_aux_loss_coef * aux_loss` to `loss` (the Mixtral/Qwen3-MoE convention TRL trainers follow); defaults
            to `use_moe`, so MoE training includes the balance loss unless switched off.
        router_aux_loss_coef (`float`, defaults to 0.01): weight of the load-balancing loss. Stored as 0.0 for dense
            models, which have no router, so no trainer can switch a balance loss on for them.
    """

    model_type = "minimind"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    default_theta = 1_000_000.0

    def __init__(
        self,
        vocab_size: int = 6400,
        hidden_size: int = 768,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = 4,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        rms_norm_eps: float = 1e-6,
        rope_parameters: dict | None = None,
        use_qk_norm: bool = True,
        tie_word_embeddings: bool = True,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        use_moe: bool = False,
        num_experts: int = 4,
        num_experts_per_tok: int = 1,
        moe_intermediate_size: int | None = None,
        n_shared_experts: int = 0,
        norm_topk_prob: bool = True,
        output_router_logits: bool | None = None,
        router_aux_loss_coef: float = 0.01,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        **kwargs,
    ):
        if "n_routed_experts" in kwargs and num_experts_per_tok == 1:
            norm_topk_prob = False  # MiniMind2, which named the experts so, renormalised only for k > 1
        # Upstream MiniMind's names for three of the fields.
        num_experts = kwargs.pop("n_routed_experts", num_experts)
        router_aux_loss_coef = kwargs.pop("aux_loss_alpha", router_aux_loss_coef)
        attention_dropout = kwargs.pop("dropout", attention_dropout)
        for key in IGNORED_LEGACY_KEYS:
            kwargs.pop(key, None)
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        if rope_parameters is None and kwargs.get("rope_scaling") is None:
            rope_parameters = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta", self.default_theta)}

        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size or default_intermediate_size(hidden_size)
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_parameters = rope_parameters
        self.use_qk_norm = use_qk_norm
        self.attention_dropout = attention_dropout
        self.attention_bias = False
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.use_moe = use_moe
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size or self.intermediate_size
        self.n_shared_experts = n_shared_experts
        self.norm_topk_prob = norm_topk_prob
        self.output_router_logits = use_moe if output_router_logits is None else output_router_logits
        self.router_aux_loss_coef = router_aux_loss_coef if use_moe else 0.0
        self._check()
        if self.head_dim is None:
            self.head_dim = hidden_size // num_attention_heads
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _check(self):
        if self.head_dim is None and self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}), or set head_dim explicitly."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})."
            )
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be between 1 and num_experts "
                f"({self.num_experts})."
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")


__all__ = ["MiniMindConfig"]
