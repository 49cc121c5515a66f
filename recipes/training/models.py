"""Loading the model and tokenizer a stage starts from, and saving the complete folder it ends with."""

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from modeling_miniminds.cli.paths import check_name_or_path, from_pretrained_or_explain
from modeling_miniminds.tokenizer import load_tokenizer


def count_parameters(model, trainable_only: bool = False) -> int:
    """Parameter count (all, or those that train) that stays right under ZeRO-3, where each process holds only a
    shard of every tensor: transformers' `num_parameters()` counts the shard."""
    params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
    return sum(getattr(p, "ds_numel", p.numel()) for p in params)


def check_vocab_fits(tokenizer: PreTrainedTokenizerBase, vocab_size: int, model_name: str) -> None:
    """Fail before training when the tokenizer can emit ids the model's embedding table does not have."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model {model_name} has vocab_size={vocab_size}: "
            "token ids past the embedding table would crash training. Use the tokenizer the model was trained "
            "with, or resize the model's embeddings first."
        )


def align_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the model config and generation config use the tokenizer's bos/eos/pad ids, so `generate` stops where
    the tokenizer ends a text and pads with its pad token. A model that cannot generate (a reward model) has no
    generation config: it gets a bare one, so its folder carries the ids it was trained with like every stage's."""
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig()
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for config in (model.config, model.generation_config):
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = pad_token_id


def save_final_model(trainer, tokenizer: PreTrainedTokenizerBase, output_dir: str | Path | None = None) -> str:
    """Save a complete, self-contained HF model folder: weights (gathered under ZeRO-3), config with `auto_map`,
    the modeling files for `trust_remote_code`, generation config and tokenizer, with `use_cache` restored."""
    output_dir = str(output_dir or trainer.args.output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    align_special_tokens(model, tokenizer)
    model.config.use_cache = True
    trainer.save_model(output_dir)
    if trainer.args.should_save:
        save_generation_config(model, output_dir)
        tokenizer.save_pretrained(output_dir)
        check_model_folder(output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def save_generation_config(model: PreTrainedModel, output_dir: str | Path) -> None:
    """Write the generation config `save_pretrained` leaves out for a model that cannot generate (a reward model)."""
    if not model.can_generate():
        model.generation_config.save_pretrained(output_dir)


def check_model_folder(folder: str | Path) -> None:
    """Fail loudly if a saved model folder lacks a file that loading it needs, remote-code modules included."""
    folder = Path(folder)
    needed = ["config.json", "generation_config.json"]
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    local_refs = [ref for ref in config.get("auto_map", {}).values() if isinstance(ref, str) and "--" not in ref]
    needed += sorted({ref.split(".")[0] + ".py" for ref in local_refs})
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise RuntimeError(f"The saved model in {folder} is incomplete: {', '.join(missing)} missing.")


def resolve_tokenizer(model_args) -> PreTrainedTokenizerBase:
    """The tokenizer from --tokenizer_name_or_path, else from --model_name_or_path."""
    if model_args.tokenizer_name_or_path is None and model_args.model_name_or_path is None:
        raise ValueError("pass --tokenizer_name_or_path (or --model_name_or_path to reuse that model's tokenizer)")
    if model_args.tokenizer_name_or_path is None:
        return load_tokenizer(check_name_or_path(model_args.model_name_or_path, "model"))
    return load_tokenizer(model_args.tokenizer_name_or_path)


def load_causal_lm(model_args, tokenizer: PreTrainedTokenizerBase, trust_remote_code: bool = False) -> PreTrainedModel:
    """The saved model named by --model_name_or_path (local folder or Hub id), checked against the tokenizer."""
    name = check_name_or_path(model_args.model_name_or_path, "model")
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = from_pretrained_or_explain(
        AutoModelForCausalLM,
        name,
        "model",
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
    )
    check_vocab_fits(tokenizer, model.config.vocab_size, name)
    return model
