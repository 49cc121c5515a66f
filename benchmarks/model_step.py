"""Training-step speed and memory of MiniMind against transformers' Qwen3ForCausalLM of the same size.

Both models get the same weights, batch and attention implementation; their steps alternate in one process so that
machine noise hits both alike. Prints tokens/s, activation memory (and CUDA peak memory on a GPU) side by side, and the
MiniMind / Qwen3 ratio (>= 1.0 means MiniMind is at least as fast).

    python benchmarks/model_step.py                                   # minimind-26m, CPU-sized batch
    python benchmarks/model_step.py --preset minimind-64m --batch_size 16 --seq_len 1024 --dtype bfloat16   # on a GPU
"""

import argparse
import statistics
import time

import torch

from modeling_miniminds import MiniMindForCausalLM, get_config, to_qwen3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="minimind-26m", help="model preset to compare (default: minimind-26m)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model, after --warmup")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--attn_implementation", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"])
    parser.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def activation_bytes(model, batch) -> int:
    """Bytes autograd saves for backward in one forward: the memory a training step holds besides weights."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def train_step(model, optimizer, batch, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_cuda_bytes(model, optimizer, batch, device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    train_step(model, optimizer, batch, device)
    return torch.cuda.max_memory_allocated(device)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(0)
    config = get_config(args.preset)
    minimind = MiniMindForCausalLM(config)
    qwen3 = to_qwen3(minimind)
    models = {"minimind": minimind, "qwen3": qwen3}
    for model in models.values():
        model.set_attn_implementation(args.attn_implementation)
        model.to(device=device, dtype=dtype).train()
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False) for name, model in models.items()}

    ids = torch.randint(3, config.vocab_size, (args.batch_size, args.seq_len), device=device)
    batch = {"input_ids": ids, "labels": ids}
    tokens = args.batch_size * args.seq_len

    memory = {name: activation_bytes(model, batch) for name, model in models.items()}
    times = {name: [] for name in models}
    for step in range(args.warmup + args.steps):
        for name in models if step % 2 == 0 else reversed(list(models)):
            elapsed = train_step(models[name], optimizers[name], batch, device)
            if step >= args.warmup:
                times[name].append(elapsed)
    peak = {name: peak_cuda_bytes(models[name], optimizers[name], batch, device) for name in models}

    speed = {name: tokens / statistics.median(values) for name, values in times.items()}
    params = sum(p.numel() for p in minimind.parameters()) / 1e6
    print(
        f"{args.preset} ({params:.1f}M params), batch {args.batch_size} x {args.seq_len}, {dtype}, "
        f"{args.attn_implementation}, {device}, median of {args.steps} steps"
    )
    print(f"{'model':<10} {'tokens/s':>12} {'activations MB':>15} {'peak CUDA MB':>13}")
    for name in models:
        cuda = f"{peak[name] / 2**20:.0f}" if peak[name] is not None else "-"
        print(f"{name:<10} {speed[name]:>12.0f} {memory[name] / 2**20:>15.1f} {cuda:>13}")
    ratio = speed["minimind"] / speed["qwen3"]
    memory_ratio = memory["minimind"] / memory["qwen3"]
    print(f"speed ratio minimind/qwen3: {ratio:.3f}   activation memory ratio: {memory_ratio:.3f}")
    return {"tokens_per_second": speed, "speed_ratio": ratio, "activation_memory_ratio": memory_ratio}


if __name__ == "__main__":
    main()
