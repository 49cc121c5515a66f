"""Conversion between MiniMind and the layouts other tools run: transformers' Qwen3 / Qwen3-MoE, GGUF (llama.cpp,
Ollama) and upstream MiniMind `.pth` checkpoints; and the push of any of them to the Hub with a model card.

    python -m modeling_miniminds.export.convert to-qwen3 runs/sft runs/sft-qwen3          # vLLM, SGLang, llama.cpp, ...
    python -m modeling_miniminds.export.convert from-qwen3 runs/sft-qwen3 runs/sft-again
    python -m modeling_miniminds.export.convert from-upstream full_sft_512.pth runs/upstream \
        --config minimind-26m --tokenizer ../minimind/model
    python -m modeling_miniminds.export.convert to-gguf runs/sft runs/gguf/sft.gguf --outtype q8_0 --modelfile
    python -m modeling_miniminds.export.convert push runs/sft you/minimind-sft             # or --push_to_hub on any of the above

A dense MiniMind with q/k-norm is Qwen3 with the same state dict; a MoE without shared experts is Qwen3-MoE with the
experts stacked. Every export is checked by equal logits on a fixed input before it is written; `to-gguf` runs
llama.cpp's own converter on that Qwen3 export (see `gguf_export`).
"""

import argparse
import sys
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
MAX_LOGIT_DIFF = 1e-4


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
            key = lambda proj: EXPERT.format(layer=layer, expert=expert, proj=proj)  # noqa: E731
            gate_up.append(torch.cat([state_dict.pop(key("gate_proj")), state_dict.pop(key("up_proj"))]))
            down.append(state_dict.pop(key("down_proj")))
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
            for proj, weight in (("gate_proj", gate), ("up_proj", up), ("down_proj", down[expert])):
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
    from ..tokenizer import load_tokenizer

    if (source / "tokenizer.json").is_file() or (source / "tokenizer_config.json").is_file():
        load_tokenizer(source).save_pretrained(output)


def save_converted(source_model, converted, output: Path, tokenizer_dir: Path | None) -> float:
    """Check logits, then write the converted model, the source's generation config and tokenizer."""
    diff = check_same_logits(source_model, converted, source_model.config.vocab_size)
    converted.generation_config = GenerationConfig.from_dict(source_model.generation_config.to_dict())
    converted.save_pretrained(output)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, output)
    return diff


def export_qwen3(source: Path, output: Path) -> float:
    model = MiniMindForCausalLM.from_pretrained(source, dtype=torch.float32)
    return save_converted(model, to_qwen3(model), output, source)


def import_qwen3(source: Path, output: Path) -> float:
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if not isinstance(model, (Qwen3ForCausalLM, Qwen3MoeForCausalLM)):
        raise ValueError(
            f"{source}: expected a Qwen3ForCausalLM or Qwen3MoeForCausalLM folder, got {type(model).__name__}"
        )
    return save_converted(model, from_qwen3(model), output, source)


def load_upstream_state_dict(checkpoint: Path) -> dict:
    """Tensors of an upstream `.pth` (a plain state dict; `module.` prefixes from DDP dropped), loaded safely."""
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{checkpoint}: expected a state dict of tensors (torch.save(model.state_dict()))")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def import_upstream(checkpoint: Path, output: Path, config: str, tokenizer_dir: Path | None) -> int:
    """Upstream MiniMind weights into a MiniMinds folder, every key accounted for (strict); returns the tensor count."""
    from ..presets import get_config

    model = MiniMindForCausalLM(get_config(config))
    state_dict = load_upstream_state_dict(checkpoint)
    if model.config.tie_word_embeddings:
        state_dict.setdefault("lm_head.weight", state_dict.get("model.embed_tokens.weight"))
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint} does not match config {config}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state_dict.items():
        if tensor.shape != model.state_dict()[key].shape:
            raise ValueError(
                f"{checkpoint}: {key} has shape {tuple(tensor.shape)}, config {config} expects "
                f"{tuple(model.state_dict()[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)
    model.save_pretrained(output)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, output)
    return len(state_dict)


def add_push_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--push_to_hub", metavar="REPO", default=None, help="also upload the result to this Hub repo")
    command.add_argument("--private", action="store_true", help="create the Hub repo private (with --push_to_hub)")
    command.add_argument(
        "--data",
        default=None,
        help="what the model was trained on, for the model card (default: read from a report.json next to the weights)",
    )


def make_parser() -> argparse.ArgumentParser:
    from .gguf import LLAMA_CPP_ENV, OUTTYPES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_qwen3_cmd = commands.add_parser("to-qwen3", help="MiniMind folder -> Qwen3ForCausalLM / Qwen3MoeForCausalLM")
    from_qwen3_cmd = commands.add_parser("from-qwen3", help="Qwen3 / Qwen3-MoE folder -> MiniMind folder")
    for command in (to_qwen3_cmd, from_qwen3_cmd):
        command.add_argument("source", type=Path, help="model folder to convert")
        command.add_argument("output", type=Path, help="folder to write")
        add_push_arguments(command)
    upstream = commands.add_parser("from-upstream", help="upstream MiniMind .pth -> MiniMinds folder")
    upstream.add_argument("checkpoint", type=Path, help="upstream state dict (.pth)")
    upstream.add_argument("output", type=Path, help="folder to write")
    upstream.add_argument("--config", required=True, help="preset name or upstream/MiniMinds config.json")
    upstream.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder to copy (upstream's works)")
    add_push_arguments(upstream)
    gguf = commands.add_parser("to-gguf", help="MiniMind folder -> GGUF file, through llama.cpp's converter")
    gguf.add_argument("source", type=Path, help="MiniMind model folder, with its tokenizer")
    gguf.add_argument("output", type=Path, help="GGUF file to write")
    gguf.add_argument("--outtype", choices=OUTTYPES, default="f16", help="tensor type (default: f16)")
    gguf.add_argument("--modelfile", action="store_true", help="also write an Ollama Modelfile next to the file")
    gguf.add_argument(
        "--llama_cpp",
        default=None,
        help=f"llama.cpp checkout or unpacked llama-cpp-python sdist "
        f"(default: ${LLAMA_CPP_ENV}, then the installed llama_cpp, then <venv>/src)",
    )
    add_push_arguments(gguf)
    push = commands.add_parser("push", help="upload a model folder to the Hub with a generated model card")
    push.add_argument("source", type=Path, help="model folder to upload")
    push.add_argument("repo", help="Hub repository id, owner/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--data", default=None, help="what the model was trained on, for the model card")
    return parser


def push(args, folder: Path, card_source: Path | None = None, gguf: Path | None = None) -> str:
    """Upload `folder` (or only the GGUF file and its Modelfile) with a card written from `card_source`'s files."""
    from .model_card import model_card, push_to_hub

    repo = args.repo if args.command == "push" else args.push_to_hub
    card = model_card(card_source or folder, repo, gguf_files=[gguf] if gguf else (), data=args.data)
    allow = [gguf.name, *(["Modelfile"] if args.modelfile else [])] if gguf else None
    return push_to_hub(folder, repo, card, allow_patterns=allow, private=args.private)


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        if args.command == "push":
            print(f"pushed {args.source} to {push(args, args.source)}")
            return 0
        if args.command == "from-upstream":
            count = import_upstream(args.checkpoint, args.output, args.config, args.tokenizer)
            print(f"wrote {args.output}: {count} tensors from {args.checkpoint}, all keys matched")
        elif args.command == "to-gguf":
            from .gguf import export_gguf

            diff = export_gguf(args.source, args.output, args.outtype, args.llama_cpp, args.modelfile)
            size = args.output.stat().st_size / 2**20
            print(
                f"wrote {args.output} ({args.outtype}, {size:.1f} MiB) through Qwen3, max |logit diff| {diff:.3g}"
                f"{'; Modelfile next to it' if args.modelfile else ''}"
            )
        else:
            convert = export_qwen3 if args.command == "to-qwen3" else import_qwen3
            diff = convert(args.source, args.output)
            print(f"wrote {args.output}: max |logit diff| vs {args.source} = {diff:.3g}")
        if args.push_to_hub:
            if args.command == "to-gguf":
                url = push(args, args.output.parent, card_source=args.source, gguf=args.output)
            else:
                url = push(args, args.output)
            print(f"pushed to {url}")
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
