"""Decode speed of the project's generation path (`modeling_miniminds.generation`) against plain `model.generate`.

Three paths decode the same random-init weights from the same prompts: `generation.Generator` on a MiniMind prepared
by `prepare_for_decoding`, transformers' `generate` on MiniMind (dynamic cache, no compile: "HF eager"), and
`generate` on the `Qwen3ForCausalLM` export (`convert.to_qwen3`). With `--compile`, the Generator with a static
cache and a compiled one-token step is timed too. Rounds alternate the paths so that machine noise hits all alike; the
median round is reported. Greedy token ids must be identical across paths (asserted). Decode tokens/s excludes
prefill: (T(n new tokens) - T(1 new token)) / (n - 1) per row. Wall time is what a user waits; process CPU time (all
threads) is printed beside it because on a shared machine it moves much less from run to run.

    python benchmarks/generate.py                                   # minimind-26m, batch 1 and 8, CPU
    python benchmarks/generate.py --preset minimind-tiny --rounds 2 --new_tokens 16
    python benchmarks/generate.py --compile --threads 2
"""

import argparse
import copy
import statistics
import time

import torch
from transformers import GenerationConfig

from modeling_miniminds import MiniMindForCausalLM, get_config, to_qwen3
from modeling_miniminds.generation import Generator, SamplingParams, prepare_for_decoding


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="minimind-26m", help="model preset (default: minimind-26m)")
    parser.add_argument("--batch_sizes", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    parser.add_argument("--prompt_len", type=int, default=32, help="prompt tokens per row (default: 32)")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per row (default: 64)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per path, after one warm-up (default: 5)")
    threads_help = "torch CPU threads (default: 1; on a busy machine more threads wait for each other)"
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    parser.add_argument("--compile", action="store_true", help="also time static cache + torch.compile (slow warmup)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class _NoTokenizer:
    """The Generator only decodes text for streaming; the benchmark counts tokens and needs none."""

    eos_token_id, pad_token_id = None, 0

    def decode(self, ids, **kwargs):
        return ""


def hf_path(model, new_tokens: int):
    """`model.generate` with the dynamic cache; no end-of-sequence, so every row decodes `new_tokens`."""
    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)

    def run(input_ids):
        with torch.inference_mode():
            return model.generate(input_ids, generation_config=config)[:, input_ids.shape[1] :]

    return run


def plain_generator(model, **kwargs) -> Generator:
    generator = Generator(model, _NoTokenizer(), **kwargs)
    generator.stop_ids = set()  # random weights may emit <|im_end|>; every path decodes the full length
    return generator


def project_path(generator: Generator, new_tokens: int):
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)

    def run(input_ids):
        completions = generator.generate(input_ids.tolist(), params, batch_size=len(input_ids))
        return torch.tensor([c.token_ids for c in completions])

    return run


def build_paths(args, model) -> dict:
    """name -> callable(n) -> callable(input_ids) -> generated ids."""
    qwen3 = to_qwen3(model).eval()
    fast = prepare_for_decoding(copy.deepcopy(model))
    paths = {
        "project": lambda n: project_path(plain_generator(fast), n),
        "hf-eager": lambda n: hf_path(model, n),
        "qwen3-hf-eager": lambda n: hf_path(qwen3, n),
    }
    if args.compile:
        compiled = plain_generator(fast, compile=True)
        paths["project+compile"] = lambda n: project_path(compiled, n)
    return paths


def time_call(fn, input_ids) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(input_ids)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = get_config(args.preset)
    model = MiniMindForCausalLM(config).eval()
    paths = build_paths(args, model)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"{args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{torch.get_num_threads()} threads, prompt {args.prompt_len}, {args.new_tokens} new tokens")  # fmt: skip

    results, cpu_results = {}, {}
    for batch_size in batch_sizes:
        input_ids = torch.randint(10, config.vocab_size, (batch_size, args.prompt_len))
        full = {name: make(args.new_tokens) for name, make in paths.items()}
        first = {name: make(1) for name, make in paths.items()}
        outputs = {name: fn(input_ids) for name, fn in full.items()}  # warm-up (and compilation) + identity check
        for name in (n for n in first if n != "hf-eager"):
            first[name](input_ids)
            if not torch.equal(outputs[name], outputs["hf-eager"]):
                raise AssertionError(f"batch {batch_size}: greedy ids of {name} differ from hf-eager")
        wall, cpu = {name: [] for name in paths}, {name: [] for name in paths}
        for _ in range(args.rounds):
            for name in paths:
                (wall_n, cpu_n), (wall_1, cpu_1) = time_call(full[name], input_ids), time_call(first[name], input_ids)
                wall[name].append((wall_n - wall_1) / (args.new_tokens - 1))
                cpu[name].append((cpu_n - cpu_1) / (args.new_tokens - 1))
        results[batch_size] = {name: statistics.median(times) for name, times in wall.items()}
        cpu_results[batch_size] = {name: statistics.median(times) for name, times in cpu.items()}

    columns = "".join(f"{f'batch {b} tok/s':>16}{'ms/step':>9}{'cpu ms':>8}" for b in batch_sizes)
    print(f"{'path':<18}{columns}")
    for name in paths:
        row = "".join(f"{b / results[b][name]:>16.1f}{1000 * results[b][name]:>9.2f}{1000 * cpu_results[b][name]:>8.2f}"
                      for b in batch_sizes)  # fmt: skip
        print(f"{name:<18}{row}")
    for b in batch_sizes:
        ratios = {name: results[b][name] / results[b]["project"] for name in paths if name != "project"}
        print(f"batch {b}: project is " + ", ".join(f"{r:.2f}x {name}" for name, r in ratios.items()))
    speedup = results[batch_sizes[0]]["hf-eager"] / results[batch_sizes[0]]["project"]
    print(f"decode batch-{batch_sizes[0]} speedup vs HF eager: {speedup:.2f}x")
    return results


if __name__ == "__main__":
    main()
