"""MiniMind <-> transformers' Qwen3 / Qwen3-MoE, so any Qwen3-aware tool (vLLM, SGLang, llama.cpp, ...) runs it.

A dense MiniMind with q/k-norm is Qwen3 with the same state dict; a MoE without shared experts is Qwen3-MoE with the
experts stacked. Every conversion is checked by equal logits on a fixed input before it is written.

The exported `generation_config.json` carries Qwen3's sampling defaults (`QWEN3_SAMPLING`): `transformers serve`
applies a request's `temperature` only when the folder's config samples, so without them every request was greedy.
The price: a plain `model.generate(...)` on the export samples too, unless called with `do_sample=False`.
"""

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from ..configuration_minimind import MiniMindConfig
from ..modeling_minimind import MiniMindForCausalLM
from ..tokenizer import load_tokenizer

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
MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "router_aux_loss_coef")
EXPERT = "model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"
EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
MAX_LOGIT_DIFF = 1e-4
# Qwen3's own generation defaults (the `generation_config.json` of its released checkpoints).
QWEN3_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}


def to_qwen3_config(config: MiniMindConfig) -> Qwen3Config | Qwen3MoeConfig:
    """The Qwen3 (dense) or Qwen3-MoE config with the same shapes; MiniMind features they lack are refused."""
    if not config.use_qk_norm:
        raise ValueError("Qwen3 always normalises q and k: a MiniMind with use_qk_norm=False has no Qwen3 equivalent")
    shared = {name: getattr(config, name) for name in SHARED_FIELDS}
    if not config.use_moe:
        return Qwen3Config(**shared, attention_bias=False)
    if config.n_shared_experts:
        raise ValueError(
            f"Qwen3-MoE has no shared experts and this model has {config.n_shared_experts}: it cannot be exported "
            "to the Qwen3-MoE layout (serve it with trust_remote_code instead)"
        )
    moe = {name: getattr(config, name) for name in MOE_FIELDS}
    return Qwen3MoeConfig(**shared, **moe, attention_bias=False, decoder_sparse_step=1, mlp_only_layers=[])


def stack_experts(state_dict: dict, config: MiniMindConfig) -> dict:
    """MiniMind's per-expert Linear weights -> Qwen3-MoE's stacked `gate_up_proj` (gate first) and `down_proj`."""
    state_dict = dict(state_dict)
    for layer in range(config.num_hidden_layers):
        gate_up, down = [], []
        for expert in range(config.num_experts):
            weights = {
                proj: state_dict.pop(EXPERT.format(layer=layer, expert=expert, proj=proj))
                for proj in EXPERT_PROJECTIONS
            }
            gate_up.append(torch.cat([weights["gate_proj"], weights["up_proj"]]))
            down.append(weights["down_proj"])
        prefix = f"model.layers.{layer}.mlp"
        state_dict[f"{prefix}.experts.gate_up_proj"] = torch.stack(gate_up)
        state_dict[f"{prefix}.experts.down_proj"] = torch.stack(down)
    return state_dict


def unstack_experts(state_dict: dict, config) -> dict:
    """The inverse of `stack_experts`."""
    state_dict = dict(state_dict)
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp"
        gate_up = state_dict.pop(f"{prefix}.experts.gate_up_proj")
        down = state_dict.pop(f"{prefix}.experts.down_proj")
        for expert in range(config.num_experts):
            gate, up = gate_up[expert].chunk(2, dim=0)
            for proj, weight in zip(EXPERT_PROJECTIONS, (gate, up, down[expert]), strict=True):
                state_dict[EXPERT.format(layer=layer, expert=expert, proj=proj)] = weight.clone()
    return state_dict


def to_qwen3(model: MiniMindForCausalLM) -> Qwen3ForCausalLM | Qwen3MoeForCausalLM:
    """A Qwen3 (or Qwen3-MoE) model holding a copy of the MiniMind weights (serves with any Qwen3-aware tool)."""
    config = to_qwen3_config(model.config)
    state_dict = model.state_dict()
    if model.config.use_moe:
        qwen3 = Qwen3MoeForCausalLM(config)
        state_dict = stack_experts(state_dict, model.config)
    else:
        qwen3 = Qwen3ForCausalLM(config)
    qwen3.to(model.dtype).load_state_dict(state_dict, strict=True)
    return qwen3


def from_qwen3(model: Qwen3ForCausalLM | Qwen3MoeForCausalLM) -> MiniMindForCausalLM:
    """A MiniMind holding a copy of a Qwen3 or Qwen3-MoE (every layer sparse) model's weights."""
    fields = {name: getattr(model.config, name) for name in SHARED_FIELDS}
    state_dict = model.state_dict()
    if isinstance(model, Qwen3MoeForCausalLM):
        if model.config.mlp_only_layers or model.config.decoder_sparse_step != 1:
            raise ValueError("only Qwen3-MoE models whose every layer is sparse map onto MiniMind's MoE")
        fields.update({name: getattr(model.config, name) for name in MOE_FIELDS}, use_moe=True)
        state_dict = unstack_experts(state_dict, model.config)
    minimind = MiniMindForCausalLM(MiniMindConfig(**fields, use_qk_norm=True)).to(model.dtype)
    minimind.load_state_dict(state_dict, strict=True)
    return minimind


@torch.no_grad()
def check_same_logits(reference, converted, vocab_size: int) -> float:
    """Max |logit difference| on a fixed input; raises when the converted model does not compute the same thing."""
    ids = torch.randint(3, vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    diff = (reference.eval()(ids).logits.float() - converted.eval()(ids).logits.float()).abs().max().item()
    if diff > MAX_LOGIT_DIFF:
        raise RuntimeError(f"converted model differs from the source: max |logit diff| {diff:.3g} > {MAX_LOGIT_DIFF}")
    return diff


def copy_tokenizer(source: Path, output: Path) -> None:
    """The tokenizer files of `source`, if it has any, written unchanged next to the converted weights."""
    if (source / "tokenizer.json").is_file() or (source / "tokenizer_config.json").is_file():
        load_tokenizer(source).save_pretrained(output)


def qwen3_generation_config(source: GenerationConfig) -> GenerationConfig:
    """The source's special-token ids (eos stops at the end of a turn) with Qwen3's sampling defaults."""
    ids = {name: getattr(source, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return GenerationConfig(**ids, **QWEN3_SAMPLING)


def save_converted(
    source_model, converted, output: Path, tokenizer_dir: Path | None, generation_config: GenerationConfig
) -> float:
    """Check logits, then write the converted model, its generation config and the source's tokenizer."""
    diff = check_same_logits(source_model, converted, source_model.config.vocab_size)
    converted.generation_config = generation_config
    converted.save_pretrained(output)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, output)
    return diff


def export_qwen3(source: Path, output: Path) -> float:
    """MiniMind folder -> Qwen3 folder; returns the max |logit diff|."""
    model = MiniMindForCausalLM.from_pretrained(source, dtype=torch.float32)
    return save_converted(model, to_qwen3(model), output, source, qwen3_generation_config(model.generation_config))


def import_qwen3(source: Path, output: Path) -> float:
    """Qwen3 / Qwen3-MoE folder -> MiniMind folder; returns the max |logit diff|."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if not isinstance(model, (Qwen3ForCausalLM, Qwen3MoeForCausalLM)):
        raise ValueError(
            f"{source}: expected a Qwen3ForCausalLM or Qwen3MoeForCausalLM folder, got {type(model).__name__}"
        )
    generation_config = GenerationConfig.from_dict(model.generation_config.to_dict())
    return save_converted(model, from_qwen3(model), output, source, generation_config)
