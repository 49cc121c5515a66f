"""Pretraining throughput: the recipe against a bare training loop, and packing against padding.

1. Recipe overhead: tokens/s of `recipes/pretrain.py` end to end (Trainer, dataloader, collator, callbacks, logging)
   against a bare loop doing only forward, backward, clipping and the optimizer step on the same model, batch and
   optimizer. Runs alternate in one process and the best of each is compared: other load on the machine only ever
   slows a run down, so the best run is the least disturbed one. Target: overhead under 10%.
2. Packing: useful (non-pad) tokens/s of packed blocks against the same documents padded one per row, padded to
   `block_size` as upstream MiniMind does and padded to the longest row of each batch.
3. On CUDA: model FLOPs utilisation of the recipe run (bf16 peak of the GPU, or --peak_tflops).

    python benchmarks/pretrain_throughput.py --model minimind-tiny --block_size 256 --batch_size 8
    python benchmarks/pretrain_throughput.py --model minimind-26m --steps 20
    python benchmarks/pretrain_throughput.py --model minimind-64m --block_size 1024 --batch_size 16 --bf16
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, Trainer, TrainerCallback

from data_process.collators import PackedBlockCollator
from data_process.loading import iter_texts, load_text_dataset
from data_process.pack import pack_dataset, tokenize_dataset
from data_process.synth import build_corpus
from modeling_miniminds.tokenizer import train_tokenizer
from recipes.training.cli import RecipeParser
from recipes.training.models import count_parameters
from recipes.training.packed_text import PretrainConfig, PretrainModelArguments, PretrainScriptArguments, build_model
from recipes.training.pretraining import pretrain


def make_parser():
    return RecipeParser((PretrainScriptArguments, PretrainConfig, PretrainModelArguments))


# Dense bf16 peak TFLOPS (no sparsity) of GPUs MFU is usually quoted for.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


class StepTimes(TrainerCallback):
    """Wall-clock time at the end of every optimizer step: everything the training loop does in between counts."""

    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def rate_after_warmup(times, tokens_per_step, warmup):
    """Tokens/s over the steps after `warmup`, from per-step end times."""
    return tokens_per_step * (len(times) - 1 - warmup) / (times[-1] - times[warmup])


def make_optimizer(model, training_args):
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    return optimizer_cls(model.parameters(), **optimizer_kwargs)


def autocast(bf16):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


def bare_loop(model, batches, training_args, steps, warmup):
    """Forward, backward, clip, step: the least a training step can do. Returns (tokens/s, useful tokens/s)."""
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, training_args)
    model.train()
    times, useful = [], []
    for step in range(steps + 1):
        batch = {k: v.to(device, non_blocking=True) for k, v in batches[step % len(batches)].items()}
        with autocast(training_args.bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        mask = batch.get("attention_mask")
        useful.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
    seconds = times[-1] - times[warmup]
    tokens = sum(batches[s % len(batches)]["input_ids"].numel() for s in range(warmup + 1, steps + 1))
    return tokens / seconds, sum(useful[warmup + 1 :]) / seconds


def packed_batches(blocks, batch_size, document_mask=True):
    collate = PackedBlockCollator(document_mask=document_mask)
    starts = range(0, len(blocks) - batch_size + 1, batch_size)
    return [collate(blocks.select(range(i, i + batch_size))) for i in starts]


def padded_batches(documents, batch_size, block_size, pad_id, to_longest):
    """One document per row, truncated to block_size, padded right; labels ignore the padding."""
    rows = [ids[:block_size] for ids in documents["input_ids"]]
    batches = []
    for i in range(0, len(rows) - batch_size + 1, batch_size):
        chunk = rows[i : i + batch_size]
        width = max(map(len, chunk)) if to_longest else block_size
        input_ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
        for r, ids in enumerate(chunk):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention_mask[r, : len(ids)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return batches


def flops_per_token(config, block_size):
    """Training FLOPs per token: 6 x matmul parameters (lm_head included) + attention scores and values."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    attention_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    mlp_width = config.intermediate_size
    if config.use_moe:
        mlp_width = config.moe_intermediate_size * (config.num_experts_per_tok + config.n_shared_experts)
    per_layer = hidden * (2 * attention_width + 2 * kv_width) + 3 * hidden * mlp_width
    matmul_params = layers * per_layer + hidden * config.vocab_size
    return 6 * matmul_params + 12 * layers * attention_width * block_size


def peak_flops(override_tflops):
    if override_tflops:
        return override_tflops * 1e12
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def recipe_run(args, data, tokenizer_dir, output_dir):
    """Recipe tokens/s (steady state) and its trainer summary."""
    timer = StepTimes()
    argv = [
        "--model_config",
        args.model,
        "--dataset_name",
        str(data),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        "--output_dir",
        str(output_dir),
        "--block_size",
        str(args.block_size),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--max_steps",
        str(args.steps + 1),
        "--eval_strategy",
        "no",
        "--eval_on_start",
        "false",
        "--save_strategy",
        "no",
        "--logging_steps",
        "10",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--warmup_steps",
        "0",
        "--bf16",
        str(args.bf16).lower(),
        "--attn_implementation",
        args.attn_implementation,
        "--dataloader_num_workers",
        str(args.num_workers),
        "--dataloader_drop_last",
        "true",
    ]
    pretrain(*make_parser().parse_args_and_config(argv), callbacks=[timer])
    return rate_after_warmup(timer.times, args.batch_size * args.block_size, args.warmup)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minimind-tiny", help="model preset (default: minimind-tiny)")
    parser.add_argument("--block_size", type=int, default=256, help="tokens per sequence (default: 256)")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per step (default: 8)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run, after warmup (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps of each run (default: 5)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare/recipe runs (default: 3)")
    parser.add_argument("--vocab_size", type=int, default=6400, help="tokenizer vocabulary (default: 6400)")
    parser.add_argument("--corpus_size", default="small", choices=("tiny", "small"), help="built-in corpus size")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops (GPU)")
    parser.add_argument("--attn_implementation", default="sdpa", help="attention kernel (default: sdpa)")
    parser.add_argument("--num_workers", type=int, default=0, help="recipe dataloader workers (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="GPU peak TFLOPS for MFU (default: by name)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pretrain-bench-") as work:
        return measure(args, Path(work))


def measure(args, work):
    torch.manual_seed(0)
    corpus = build_corpus(work / "corpus", size=args.corpus_size, seed=0)
    train_tokenizer(iter_texts([corpus["pretrain"]]), work / "tokenizer", vocab_size=args.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    texts = load_text_dataset(corpus["pretrain"])
    blocks = pack_dataset(texts, tokenizer, args.block_size)
    documents = tokenize_dataset(texts, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    training_args = make_parser().parse_args_and_config(
        ["--output_dir", str(work / "unused"), "--bf16", str(args.bf16).lower()]
    )[1]

    def fresh_model():
        torch.manual_seed(0)
        model_args = PretrainModelArguments(model_config=args.model, attn_implementation=args.attn_implementation)
        return build_model(model_args, tokenizer, args.block_size).to(device)

    pad_id = tokenizer.pad_token_id
    loops = {
        "packed": packed_batches(blocks, args.batch_size),
        "padded to block_size": padded_batches(documents, args.batch_size, args.block_size, pad_id, False),
        "padded to longest": padded_batches(documents, args.batch_size, args.block_size, pad_id, True),
    }
    useful = {name: [] for name in loops}
    bare, recipe = [], []
    for repeat in range(args.repeats):
        for name, batches in loops.items():
            total, non_pad = bare_loop(fresh_model(), batches, training_args, args.steps, args.warmup)
            useful[name].append(non_pad)
            if name == "packed":
                bare.append(total)
        recipe.append(recipe_run(args, corpus["pretrain"], work / "tokenizer", work / f"recipe-{repeat}"))
        print(f"repeat {repeat}: bare {bare[-1]:,.0f} tok/s, recipe {recipe[-1]:,.0f} tok/s", flush=True)

    model = fresh_model()
    lengths = [len(ids) for ids in documents["input_ids"]]
    results = {
        "model": args.model,
        "parameters": count_parameters(model),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "block_size": args.block_size,
        "batch_size": args.batch_size,
        "mean_document_tokens": statistics.mean(lengths),
        "bare_tokens_per_second": max(bare),
        "recipe_tokens_per_second": max(recipe),
        "bare_runs": bare,
        "recipe_runs": recipe,
        "useful_tokens_per_second": {name: max(values) for name, values in useful.items()},
    }
    results["recipe_over_bare"] = results["recipe_tokens_per_second"] / results["bare_tokens_per_second"]
    best = results["useful_tokens_per_second"]
    results["packed_over_padded"] = {k: best["packed"] / v for k, v in best.items() if k != "packed"}
    if device == "cuda":
        peak = peak_flops(args.peak_tflops)
        per_token = flops_per_token(model.config, args.block_size)
        results["mfu"] = results["recipe_tokens_per_second"] * per_token / peak if peak else None
    return results


def report(results):
    print(
        f"\n{results['model']} ({results['parameters'] / 1e6:.2f}M parameters) on {results['device']}, "
        f"batch {results['batch_size']} x {results['block_size']} tokens"
    )
    print("best of the alternating runs:")
    print(f"{'bare training step':<28}{results['bare_tokens_per_second']:>14,.0f} tok/s")
    print(f"{'recipe end to end':<28}{results['recipe_tokens_per_second']:>14,.0f} tok/s")
    overhead = 1 - results["recipe_over_bare"]
    print(
        f"{'  (all runs)':<28}bare {', '.join(f'{v:,.0f}' for v in results['bare_runs'])}; "
        f"recipe {', '.join(f'{v:,.0f}' for v in results['recipe_runs'])}"
    )
    print(f"{'recipe / bare':<28}{results['recipe_over_bare']:>14.3f}   (overhead {overhead:.1%}, target < 10%)")
    print(f"\nuseful tokens/s (documents average {results['mean_document_tokens']:.0f} tokens)")
    for name, value in results["useful_tokens_per_second"].items():
        ratio = results["packed_over_padded"].get(name)
        suffix = f"   packed is {ratio:.2f}x" if ratio else ""
        print(f"{name:<28}{value:>14,.0f} tok/s{suffix}")
    if "mfu" in results:
        print(f"\nMFU (recipe): {results['mfu']:.1%}" if results["mfu"] else "\nMFU: unknown GPU, pass --peak_tflops")
    else:
        print("\nMFU: needs CUDA (not measured)")


if __name__ == "__main__":
    arguments = parse_args()
    numbers = run(arguments)
    report(numbers)
    if arguments.json:
        arguments.json.write_text(json.dumps(numbers, indent=2))
