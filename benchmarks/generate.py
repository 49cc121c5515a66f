"""Decode speed of the project's generation path (`modeling_miniminds.inference`) against plain `model.generate`.

Three paths decode the same random-init weights from the same prompts: `inference.Generator` on a MiniMind prepared
by `prepare_for_decoding`, transformers' `generate` on MiniMind (dynamic cache, no compile: "HF eager"), and
`generate` on the `Qwen3ForCausalLM` export (`convert.to_qwen3`). With `--compile`, the Generator with a static
cache and a compiled one-token step is timed too. Rounds alternate the paths so that machine noise hits all alike; the
median round is reported. Greedy token ids must be identical across paths (asserted). Decode tokens/s excludes
prefill: (T(n new tokens) - T(1 new token)) / (n - 1) per row. Wall time is what a user waits; process CPU time (all
threads) is printed beside it because on a shared machine it moves much less from run to run.

`--prompt_lookup N` adds the Generator with prompt lookup decoding. Random weights repeat one token forever, which
every draft predicts, so its speedup there is an upper bound, not what chat sees. Speculative decoding is measured
on trained weights with `--model_dir`: batch 1, greedy replies to the chat prompts in `--prompts` (held-out
conversations, the reply to their last user turn) until the end of the turn, for the project's path, with
`--prompt_lookup N`, with `--draft_model DIR` (a small model of the same tokenizer), and for `model.generate` with
the same stop tokens. Each is timed per reply token whole (prefill included) and decoding only (the time of 1-token
replies taken off).

    python benchmarks/generate.py                                   # minimind-26m, batch 1 and 8, CPU
    python benchmarks/generate.py --preset minimind-tiny --rounds 2 --new_tokens 16
    python benchmarks/generate.py --compile --threads 2
    python benchmarks/generate.py --model_dir runs/demo/sft --prompts runs/demo/data/eval/sft.jsonl --prompt_lookup 8
    python benchmarks/generate.py --model_dir runs/sft-26m --draft_model runs/draft-tiny \
        --prompts runs/demo/data/eval/sft.jsonl    # the README's measured setup
"""

import argparse
import copy
import functools
import itertools
import json
import statistics
import time

import torch
from tokenizers import Tokenizer
from tokenizers.models import BPE
from transformers import GenerationConfig

from modeling_miniminds import MiniMindForCausalLM, get_config, to_qwen3
from modeling_miniminds.inference import Generator, SamplingParams, load_for_decoding, prepare_for_decoding


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
    parser.add_argument("--prompt_lookup", type=int, default=0, metavar="N", help="also time prompt lookup, N drafts")
    parser.add_argument("--model_dir", help="a trained folder: time whole chat replies to --prompts instead")
    parser.add_argument("--prompts", help="chat records (jsonl) whose last assistant turn the model answers")
    parser.add_argument("--num_prompts", type=int, default=32, help="prompts used with --model_dir (default: 32)")
    parser.add_argument("--draft_model", help="with --model_dir: also time speculative decoding with this draft")
    parser.add_argument("--draft_tokens", type=int, default=4, help="tokens per draft of --draft_model (default: 4)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class _NoTokenizer:
    """The Generator only decodes text for streaming; the benchmark counts tokens and needs none (an empty
    vocabulary: every token streams as no text)."""

    eos_token_id, pad_token_id = None, 0
    backend_tokenizer = Tokenizer(BPE())


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


def build_paths(args, model) -> tuple[dict, Generator | None]:
    """name -> callable(n) -> callable(input_ids) -> generated ids; and the prompt lookup Generator, if timed."""
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
    drafting = plain_generator(fast, prompt_lookup=args.prompt_lookup) if args.prompt_lookup else None
    if drafting:
        paths["project+lookup"] = lambda n: project_path(drafting, n)
    return paths, drafting


def time_call(fn, input_ids) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(input_ids)
    return time.perf_counter() - wall, time.process_time() - cpu


def kept_share(generator: Generator) -> str:
    return f"{generator.accepted / max(generator.drafted, 1):.0%} of {generator.drafted} draft tokens kept"


def chat_prompts(path, count: int, tokenizer) -> list[list[int]]:
    """Token prompts for the first `count` chat records: an RL record's prompt, or a conversation up to its last
    assistant turn. (Imported here: the random-weights run needs neither data module.)"""
    from data_process.chat import to_chat_row
    from recipes.training.rl import as_messages

    prompts = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(itertools.islice(lines, count), 1):
            try:
                record = json.loads(line)
                if "prompt" in record:
                    messages = as_messages(record["prompt"])
                else:
                    messages = to_chat_row(record)["messages"]
                    messages = messages[: max(i for i, m in enumerate(messages) if m["role"] == "assistant")]
            except ValueError as err:
                raise SystemExit(f"error: {path} line {number}: {err}") from None
            history = [{key: value for key, value in m.items() if value is not None} for m in messages]
            prompts.append(
                tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True, return_dict=False)
            )
    return prompts


def project_reply(generator: Generator, prompt: list[int], new_tokens: int) -> list[int]:
    return generator.generate([prompt], SamplingParams(max_new_tokens=new_tokens, temperature=0))[0].token_ids


def chat_main(args) -> dict:
    """Greedy replies of a trained model at batch 1: the project's path, with speculative decoding, and HF eager."""
    if not args.prompts:
        raise SystemExit("error: --model_dir needs --prompts (a jsonl of chat records)")
    model, tokenizer = load_for_decoding(args.model_dir, device="cpu")
    reference = type(model).from_pretrained(args.model_dir).eval()  # the weights as loaded, not reordered
    generators = {"project": Generator(model, tokenizer)}
    if args.prompt_lookup:
        generators["project+lookup"] = Generator(model, tokenizer, prompt_lookup=args.prompt_lookup)
    if args.draft_model:
        draft, _ = load_for_decoding(args.draft_model, device="cpu", what="--draft_model")
        generators["project+draft"] = Generator(model, tokenizer, draft_model=draft, draft_tokens=args.draft_tokens)
    stop_ids = sorted(generators["project"].stop_ids)

    def hf_reply(prompt: list[int], new_tokens: int) -> list[int]:
        config = GenerationConfig(
            do_sample=False, max_new_tokens=new_tokens, eos_token_id=stop_ids, pad_token_id=generators["project"].pad_id
        )
        with torch.inference_mode():
            ids = reference.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt) :].tolist()
        return next((ids[:i] for i, token in enumerate(ids) if token in stop_ids), ids)

    paths = {name: functools.partial(project_reply, generator) for name, generator in generators.items()}
    paths["hf-eager"] = hf_reply
    prompts = chat_prompts(args.prompts, args.num_prompts, tokenizer)
    replies = {name: [path(p, args.new_tokens) for p in prompts] for name, path in paths.items()}  # warm-up, check
    for name in paths:
        if replies[name] != replies["hf-eager"]:
            raise AssertionError(f"greedy replies of {name} differ from hf-eager")
    tokens = sum(len(reply) for reply in replies["hf-eager"])
    for generator in generators.values():
        generator.drafted = generator.accepted = 0
    whole, first = {name: [] for name in paths}, {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, path in paths.items():
            for times, new_tokens in ((whole, args.new_tokens), (first, 1)):
                start = time.perf_counter()
                for prompt in prompts:
                    path(prompt, new_tokens)
                times[name].append(time.perf_counter() - start)
    reply = {name: statistics.median(times) / tokens for name, times in whole.items()}
    decode = {
        name: (statistics.median(whole[name]) - statistics.median(first[name])) / (tokens - len(prompts))
        for name in paths
    }
    print(
        f"{args.model_dir}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{torch.get_num_threads()} threads, {len(prompts)} prompts from {args.prompts}, {tokens} reply tokens"
    )
    print(f"{'path':<18}{'reply ms/token':>16}{'decode ms/token':>17}{'decode tok/s':>14}")
    for name in paths:
        print(f"{name:<18}{1000 * reply[name]:>16.2f}{1000 * decode[name]:>17.2f}{1 / decode[name]:>14.1f}")
    for name in ("project+lookup", "project+draft"):
        if name in generators:
            print(f"{name}: {kept_share(generators[name])}")
    for name in generators:
        print(
            f"{name}: whole replies {reply['hf-eager'] / reply[name]:.2f}x HF eager, "
            f"decode batch-1 speedup vs HF eager: {decode['hf-eager'] / decode[name]:.2f}x"
        )
    return decode


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model_dir:
        return chat_main(args)
    torch.manual_seed(args.seed)
    config = get_config(args.preset)
    model = MiniMindForCausalLM(config).eval()
    paths, drafting = build_paths(args, model)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(
        f"{args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{torch.get_num_threads()} threads, prompt {args.prompt_len}, {args.new_tokens} new tokens"
    )

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
        row = "".join(
            f"{b / results[b][name]:>16.1f}{1000 * results[b][name]:>9.2f}{1000 * cpu_results[b][name]:>8.2f}"
            for b in batch_sizes
        )
        print(f"{name:<18}{row}")
    for b in batch_sizes:
        ratios = {name: results[b][name] / results[b]["project"] for name in paths if name != "project"}
        print(f"batch {b}: project is " + ", ".join(f"{r:.2f}x {name}" for name, r in ratios.items()))
    if drafting:
        speedup = results[batch_sizes[0]]["hf-eager"] / results[batch_sizes[0]]["project+lookup"]
        print(
            f"with prompt lookup ({kept_share(drafting)}; random weights repeat one token, so this is an upper "
            f"bound): decode batch-{batch_sizes[0]} {speedup:.2f}x HF eager"
        )
    speedup = results[batch_sizes[0]]["hf-eager"] / results[batch_sizes[0]]["project"]
    print(f"decode batch-{batch_sizes[0]} speedup vs HF eager: {speedup:.2f}x")
    return results


if __name__ == "__main__":
    main()
