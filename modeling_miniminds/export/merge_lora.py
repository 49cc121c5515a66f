"""Merge a LoRA adapter into its base model and save a full model folder, which loads through `trust_remote_code`
alone (weights, config with `auto_map`, modeling code, generation config, tokenizer).

    python -m modeling_miniminds.export.merge_lora runs/sft-lora runs/sft-lora-merged
    python -m modeling_miniminds.export.merge_lora runs/sft-lora runs/sft-lora       # in place: adapter -> runs/sft-lora/adapter

The base model is the one the adapter names (`base_model_name_or_path`) unless `--base_model` says otherwise. When
the adapter folder carries a config and a generation config (the SFT recipe writes them, aligned with the
tokenizer's end-of-turn token), those win over the base's. Weights are merged in float32. The merge itself is
`fold_adapter`, which the training stages also call on their in-memory model before they save.
"""

import shutil
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from ..cli import FlagParser, command_main
from ..tokenizer import load_tokenizer  # importing the package registers MiniMind's Auto classes

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")


def fold_adapter(model):
    """A peft `PeftModel` with its adapter folded into the weights, as a plain transformers model; any other model
    comes back unchanged. The project's one `merge_and_unload`: training stages and this command merge alike."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def load_merged(adapter_dir, base_model=None, trust_remote_code=False):
    """The base model with the adapter merged into its weights, in float32."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json, not a LoRA adapter folder")
    base_model = base_model or PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    extra = {}
    if (adapter_dir / "config.json").is_file():
        extra["config"] = AutoConfig.from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    base = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=torch.float32, trust_remote_code=trust_remote_code, **extra
    )
    if (adapter_dir / "generation_config.json").is_file():
        base.generation_config = GenerationConfig.from_pretrained(adapter_dir)
    return fold_adapter(PeftModel.from_pretrained(base, adapter_dir)), base_model


def merge_lora(adapter_dir, output_dir, base_model=None, trust_remote_code=False) -> Path:
    """Write the merged model to `output_dir`. When that is the adapter folder itself, the adapter files move to
    `output_dir/adapter` first, so nothing is lost."""
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    model, base_model = load_merged(adapter_dir, base_model, trust_remote_code)
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(adapter_dir if has_tokenizer else base_model)
    if output_dir.resolve() == adapter_dir.resolve():
        keep = output_dir / "adapter"
        keep.mkdir(exist_ok=True)
        for name in ADAPTER_FILES:
            if (output_dir / name).exists():
                shutil.move(output_dir / name, keep / name)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def make_parser() -> FlagParser:
    parser = FlagParser(description=__doc__)
    parser.add_argument("adapter_dir", help="folder of a LoRA adapter (a `--use_peft` SFT run's output_dir)")
    parser.add_argument("output_dir", help="where to write the merged model (may be the adapter folder)")
    parser.add_argument("--base_model", default=None, help="base model folder or Hub id; None: the adapter's")
    parser.add_argument("--trust_remote_code", action="store_true", help="run modeling code shipped in the folders")
    return parser


@command_main
def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    merged = merge_lora(args.adapter_dir, args.output_dir, args.base_model, args.trust_remote_code)
    print(f"merged {args.adapter_dir} into {merged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
