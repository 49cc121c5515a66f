"""MiniMind: transformers' Qwen3 decoder (pre-norm RMSNorm, RoPE, GQA with q/k-norm, SwiGLU) with an optional mixture
of experts.

Attention, rotary embedding, MLP and the sequence-classification forward are transformers' Qwen3 code, imported. This
file keeps what MiniMind adds: the mixture of experts (router logits and balance loss as in Mixtral and Qwen3-MoE),
q/k-norm as an option, a backbone that builds a KV cache only on request, and a sequence classifier that loads through
remote code. Weights use upstream MiniMind's state-dict names, which are Qwen3's, so a dense MiniMind and
`Qwen3ForCausalLM` with the same weights produce the same logits. This file imports only torch and transformers (plus
its sibling configuration file), so it can be copied next to saved weights and loaded with `trust_remote_code=True`.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeMLP
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.versions import require_version

from .configuration_minimind import MiniMindConfig

# Older versions name the KV-cache argument `past_key_values` and would drop the `cache` passed here without a word.
require_version("transformers>=5.24", "MiniMind passes the KV cache as `cache`: pip install -U 'transformers>=5.24'")

logger = logging.get_logger(__name__)


class MiniMindRMSNorm(Qwen3RMSNorm):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Qwen3's math (normalise in fp32, scale in the input dtype) through torch's fused kernel, which is faster and
        # saves less for backward than the four-op version.
        normed = F.rms_norm(hidden_states.float(), hidden_states.shape[-1:], eps=self.variance_epsilon)
        return self.weight * normed.to(hidden_states.dtype)


class MiniMindAttention(Qwen3Attention):
    """Qwen3 attention; q/k-norm can be switched off (`use_qk_norm=False`): upstream MiniMind2 checkpoints lack it."""

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.q_norm = MiniMindRMSNorm(self.head_dim, config.rms_norm_eps) if config.use_qk_norm else nn.Identity()
        self.k_norm = MiniMindRMSNorm(self.head_dim, config.rms_norm_eps) if config.use_qk_norm else nn.Identity()


class MiniMindMoE(nn.Module):
    """Top-k routed experts plus optional always-on shared experts; returns the output and the router logits.

    Routing is upstream MiniMind's: softmax over the gate logits, the top-k probabilities as weights, renormalised to
    sum to 1 when `norm_topk_prob`. Tokens are sorted by expert and each expert runs once on its contiguous group.
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            [Qwen3MoeMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)]
        )
        self.shared_experts = nn.ModuleList(
            [Qwen3MoeMLP(config, config.moe_intermediate_size) for _ in range(config.n_shared_experts)]
        )

    def route(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, num_experts) logits -> fp32 weights and expert indices, both (tokens, top_k)."""
        router_probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        top_weights, top_experts = router_probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            if self.top_k == 1 and self.training:
                logger.warning_once(
                    "MiniMind MoE: top-1 routing with norm_topk_prob=True gives every token the weight 1, so the "
                    "router gets no gradient from the LM loss, only from the balance loss. Set norm_topk_prob=False "
                    "to train it from both (the minimind-moe preset does)."
                )
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        return top_weights, top_experts

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq_len, hidden_size = hidden_states.shape
        tokens = hidden_states.reshape(-1, hidden_size)
        router_logits = self.gate(tokens)
        top_weights, top_experts = self.route(router_logits)

        flat_experts = top_experts.reshape(-1)
        order = flat_experts.argsort(stable=True)
        token_of_slot = order // self.top_k
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()
        # Every expert runs, possibly on zero rows, so all parameters stay in the graph (DDP, ZeRO).
        groups = tokens[token_of_slot].split(counts)
        expert_out = torch.cat([expert(group) for expert, group in zip(self.experts, groups)])
        expert_out = expert_out * top_weights.reshape(-1)[order, None].to(expert_out.dtype)
        output = torch.zeros_like(tokens).index_add_(0, token_of_slot, expert_out)
        for expert in self.shared_experts:
            output = output + expert(tokens)
        return output.reshape(batch, seq_len, hidden_size), router_logits


class MiniMindDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MiniMindAttention(config, layer_idx)
        self.mlp = MiniMindMoE(config) if config.use_moe else Qwen3MLP(config)
        self.input_layernorm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The new hidden states, and the router logits of an MoE layer (None for a dense one)."""
        attn_output, _ = self.self_attn(self.input_layernorm(hidden_states), **kwargs)
        hidden_states = hidden_states + attn_output
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        router_logits = None
        if isinstance(mlp_output, tuple):
            mlp_output, router_logits = mlp_output
        return hidden_states + mlp_output, router_logits


class MiniMindPreTrainedModel(PreTrainedModel):
    config_class = MiniMindConfig
    config: MiniMindConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["MiniMindDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class MiniMindModel(MiniMindPreTrainedModel):
    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([MiniMindDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config)  # the base _init_weights refills its buffers after loading
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        """`router_logits` holds one (tokens, num_experts) tensor per MoE layer when `output_router_logits` (default:
        the config's) is on, and is None for dense models."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        for unused in ("output_attentions", "return_dict"):
            kwargs.pop(unused, None)
        # A cache is built only on request (generate() asks): an implicit one would also stop packed sequences,
        # whose position_ids restart at 0, from being detected and masked per document.
        use_cache = bool(use_cache) or cache is not None
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past_seen

        if isinstance(attention_mask, dict):  # prepared by generate()
            causal_mask = attention_mask["full_attention"]
        else:
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
            )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_router_logits = ()
        for layer in self.layers:
            hidden_states, router_logits = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                **kwargs,
            )
            if output_router_logits and router_logits is not None:
                all_router_logits += (router_logits,)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)

        return MoeModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=all_hidden_states,
            router_logits=all_router_logits or None,  # None, not (), for dense models: TRL's balance loss then is 0
        )


def step_padding_mask(attention_mask, num_tokens: int) -> torch.Tensor | None:
    """The (batch, num_tokens) padding mask of this forward's tokens, for the balance loss. While decoding, a 2-D mask
    also covers the cached tokens (Qwen3-MoE's balance loss fails there). None for 4-D or prepared masks."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        return attention_mask[:, -num_tokens:]
    return None


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        """With router logits (MoE models with `output_router_logits`), `aux_loss` is the Mixtral load-balancing loss
        over all MoE layers, padding excluded, and `loss` is the LM loss plus `router_aux_loss_coef * aux_loss`."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        aux_loss = None
        if outputs.router_logits is not None:
            aux_loss = load_balancing_loss_func(
                outputs.router_logits,
                self.config.num_experts,
                self.config.num_experts_per_tok,
                step_padding_mask(attention_mask, outputs.last_hidden_state.shape[1]),
            )
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            router_logits=outputs.router_logits,
        )


class MiniMindForSequenceClassification(GenericForSequenceClassification, MiniMindPreTrainedModel):
    """Scores a sequence from the hidden state of its last non-pad token (transformers' generic forward): a reward
    model or PPO critic with `num_labels=1`. The backbone is built directly, because the generic `__init__` resolves it
    through `AutoModel`, which cannot see remote code."""

    def __init__(self, config: MiniMindConfig):
        MiniMindPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = MiniMindModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()


__all__ = [
    "MiniMindForCausalLM",
    "MiniMindForSequenceClassification",
    "MiniMindModel",
    "MiniMindPreTrainedModel",
]
