"""SFT throughput: useful (non-padding) tokens per second of the SFT recipe with packing, against the same
conversations padded per batch, and the memory each needs.

1. Recipe end to end (`recipes.training.sft.sft`, every callback and log included): packed, the default (best-fit
   rows of max_length tokens, attention block-diagonal within a row), against `--packing false` (one conversation
   per row, padded to the longest of its batch). Runs alternate and the best of each is compared: other load on the
   machine only slows a run down. Memory: the peak RSS seen at step ends (CPU) or peak CUDA memory. Target: packed
   at least 1.5x padded on the demo's SFT data.
2. Layouts, forward and backward only, over the same conversations: packed rows, TRL's padding-free batch (all rows
   flattened into one sequence) and padded batches; why the recipe keeps packed rows apart unless the attention
   kernel is a varlen flash-attention one.

    python benchmarks/sft_throughput.py                                  # minimind-tiny on the demo data, CPU
    python benchmarks/sft_throughput.py --model minimind-26m --steps 20 --bf16
"""

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from datasets import Dataset
from trl.data_utils import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from data_process.chat import load_chat_dataset
from data_process.collators import PackedRowsCollator
from data_process.loading import iter_texts
from data_process.synth import build_corpus
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import train_tokenizer
from recipes.training.cli import RecipeParser
from recipes.training.sft import (
    SFTModelArguments,
    SFTRecipeConfig,
    SFTRecipeTrainer,
    SFTScriptArguments,
    sft,
)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "sft_tiny.yaml"


def peak_memory() -> int:
    """Bytes: peak CUDA memory allocated, or the peak resident set size of this process."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def recipe_run(args, work, base, packing, repeat):
    """Useful tokens/s (non-padding tokens, counted by the Trainer), peak memory and useful tokens per step of one
    recipe run. Runs in a fresh process, so the peak memory is this run's own."""
    batch = args.rows if packing else args.conversations
    argv = [
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(base),
        "--dataset_name",
        str(work / "corpus" / "sft.jsonl"),
        "--output_dir",
        str(work / f"run-{packing}-{repeat}"),
        "--packing",
        str(packing).lower(),
        "--max_length",
        str(args.max_length),
        "--per_device_train_batch_size",
        str(batch),
        "--max_steps",
        str(args.steps),
        "--include_num_input_tokens_seen",
        "non_padding",
        "--eval_strategy",
        "no",
        "--eval_on_start",
        "false",
        "--save_strategy",
        "no",
        "--logging_steps",
        str(args.steps),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--bf16",
        str(args.bf16).lower(),
        "--attn_implementation",
        args.attn_implementation,
    ]
    if args.threads:
        torch.set_num_threads(args.threads)
    result = sft(*RecipeParser((SFTScriptArguments, SFTRecipeConfig, SFTModelArguments)).parse_args_and_config(argv))
    return result["tokens_per_second"], peak_memory(), result["tokens"] / result["steps"]


def in_fresh_process(function, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def layout_batches(conversations, tokenizer, model, args, work):
    """The same conversations as padded batches, flattened padding-free batches and packed rows."""
    prepare = SFTRecipeConfig(
        output_dir=str(work / "layouts"),
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        packing=False,
        max_length=args.max_length,
        eval_strategy="no",
        eval_on_start=False,
    )
    trainer = SFTRecipeTrainer(model=model, args=prepare, train_dataset=conversations, processing_class=tokenizer)
    examples = list(trainer.train_dataset)
    bins = list(pack_dataset(Dataset.from_list(examples).select_columns(["input_ids", "labels"]), args.max_length))
    flatten = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=True)
    rows = PackedRowsCollator(tokenizer.pad_token_id)

    def chunks(items, size):
        return [items[i : i + size] for i in range(0, len(items), size)]

    return {
        "packed rows": [rows(chunk) for chunk in chunks(bins, args.rows)],
        "padding-free (flattened)": [flatten(chunk) for chunk in chunks(bins, args.rows)],
        "padded per batch": [trainer.data_collator(chunk) for chunk in chunks(examples, args.conversations)],
    }


def forward_backward_rate(model, batches, pad_token_id, bf16):
    """Non-padding tokens per second of forward and backward over every batch (the first one warms up)."""
    device = next(model.parameters()).device
    tokens, start = 0, None
    for i, batch in enumerate(batches):
        batch = {
            k: v.to(device) for k, v in batch.items() if k in ("input_ids", "labels", "position_ids", "attention_mask")
        }
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(**batch, use_cache=False).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i == 0:
            start = time.perf_counter()
        else:
            mask = batch.get("attention_mask")
            tokens += int(mask.sum()) if mask is not None else int((batch["input_ids"] != pad_token_id).sum())
    return tokens / (time.perf_counter() - start)


def measure(args, work):
    corpus = build_corpus(work / "corpus", size="small", seed=0)
    tokenizer = train_tokenizer(iter_texts([corpus["pretrain"], corpus["sft"]]), work / "tokenizer", args.vocab_size)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_config(args.model, vocab_size=len(tokenizer)))
    model.save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")

    recipe = {True: [], False: []}
    for repeat in range(args.repeats):
        for packing in (True, False):
            recipe[packing].append(in_fresh_process(recipe_run, args, work, work / "base", packing, repeat))
        print(
            f"repeat {repeat}: packed {recipe[True][-1][0]:,.0f} tok/s, padded {recipe[False][-1][0]:,.0f} tok/s",
            flush=True,
        )

    conversations, _ = load_chat_dataset(corpus["sft"])
    conversations = conversations.select(range(args.layout_conversations))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = layout_batches(conversations, tokenizer, model, args, work)
    layouts = {name: [] for name in batches}
    for _ in range(args.repeats):
        for name, items in batches.items():
            rate = forward_backward_rate(model.to(device).train(), items, tokenizer.pad_token_id, args.bf16)
            layouts[name].append(rate)

    best = {packing: max(runs, key=lambda run: run[0]) for packing, runs in recipe.items()}
    results = {
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "max_length": args.max_length,
        "rows_per_step": args.rows,
        "conversations_per_padded_step": args.conversations,
        "recipe_useful_tokens_per_second": {"packed": best[True][0], "padded": best[False][0]},
        "recipe_runs": {"packed": [r[0] for r in recipe[True]], "padded": [r[0] for r in recipe[False]]},
        "recipe_useful_tokens_per_step": {"packed": best[True][2], "padded": best[False][2]},
        "peak_memory_mb": {"packed": best[True][1] / 2**20, "padded": best[False][1] / 2**20},
        "memory_kind": "peak CUDA memory allocated" if device == "cuda" else "peak RSS of the run's process",
        "layout_useful_tokens_per_second": {name: max(values) for name, values in layouts.items()},
        "layout_conversations": args.layout_conversations,
    }
    results["packed_over_padded"] = best[True][0] / best[False][0]
    return results


def report(results):
    print(
        f"\n{results['model']} ({results['parameters'] / 1e6:.2f}M parameters) on {results['device']}; "
        f"packed: {results['rows_per_step']} rows of <= {results['max_length']} tokens per step; "
        f"padded: {results['conversations_per_padded_step']} conversations per step"
    )
    print("recipe end to end, best of the alternating runs (useful = non-padding tokens):")
    for name in ("packed", "padded"):
        runs = ", ".join(f"{v:,.0f}" for v in results["recipe_runs"][name])
        print(
            f"  {name:<10}{results['recipe_useful_tokens_per_second'][name]:>10,.0f} tok/s   "
            f"{results['recipe_useful_tokens_per_step'][name]:>8,.0f} tok/step   "
            f"{results['peak_memory_mb'][name]:>8,.0f} MB   (runs: {runs})"
        )
    print(f"  packed / padded: {results['packed_over_padded']:.2f}x (target >= 1.5x); memory: {results['memory_kind']}")
    print(f"\nforward+backward only, the same {results['layout_conversations']} conversations in each layout:")
    layouts = results["layout_useful_tokens_per_second"]
    for name, value in layouts.items():
        print(f"  {name:<26}{value:>10,.0f} tok/s   {value / layouts['padded per batch']:.2f}x padded")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minimind-tiny", help="model preset (default: minimind-tiny)")
    parser.add_argument("--max_length", type=int, default=512, help="tokens per packed row (default: 512)")
    parser.add_argument("--rows", type=int, default=4, help="packed rows per step (default: 4)")
    parser.add_argument("--conversations", type=int, default=16, help="conversations per padded step (default: 16)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per recipe run (default: 30)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating packed/padded runs (default: 2)")
    parser.add_argument("--layout_conversations", type=int, default=400, help="conversations in part 2 (default: 400)")
    parser.add_argument(
        "--vocab_size", type=int, default=2048, help="tokenizer vocabulary, as the demo (default: 2048)"
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--attn_implementation", default="sdpa", help="attention kernel (default: sdpa)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as folder:
        numbers = measure(arguments, Path(folder))
    report(numbers)
    if arguments.json:
        arguments.json.write_text(json.dumps(numbers, indent=2))
