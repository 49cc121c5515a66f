"""Rollout speed of the PPO trainer (`recipes.training.ppo_trainer`) and the share of a PPO step spent generating.

The same prompts (built-in held-out questions, chat template, left padding) are sampled with the same seed by:
`generate_completions` (transformers' `generate`, dynamic cache: the baseline), the PPO trainer's rollout with the
dynamic cache, with the static cache, and with `--compile` the static cache plus `torch.compile` of the decoding
step (transformers only compiles on CPU when asked). Rounds alternate the paths; the median is reported. Tokens/s
counts reply tokens (up to and including <|im_end|>), prefill included: it is what a rollout costs. Then a few whole
PPO steps on the same model give the share of a step spent in `generate`.

    python benchmarks/rollout.py                                    # minimind-26m, random weights, CPU
    python benchmarks/rollout.py --preset minimind-tiny --rounds 2 --steps 2
    python benchmarks/rollout.py --model runs/demo/sft --compile
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, CompileConfig

from data_process.loading import iter_texts
from data_process.rewards import get_reward_functions
from data_process.synth import build_corpus
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.inference import FINISH_STOP, generate_completions
from modeling_miniminds.tokenizer import load_tokenizer, train_tokenizer
from recipes.training.ppo_config import PPOConfig
from recipes.training.ppo_trainer import PPOTrainer
from recipes.training.reward_model import load_reward_model
from recipes.training.rl import GuardedReward, RLModelArguments, read_rl_records


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved model folder (default: a random --preset model)")
    parser.add_argument("--preset", default="minimind-26m", help="model preset without --model (default: minimind-26m)")
    parser.add_argument("--batch_size", type=int, default=16, help="prompts per rollout (default: 16)")
    parser.add_argument("--new_tokens", type=int, default=64, help="longest reply, in tokens (default: 64)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per path, after a warm-up (default: 3)")
    parser.add_argument("--steps", type=int, default=3, help="whole PPO steps timed for the generate share")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--compile", action="store_true", help="also time static cache + torch.compile (slow warmup)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def model_and_data(args, workdir: Path):
    """The policy folder (given, or random weights with a tokenizer trained on the built-in corpus) and prompts."""
    corpus = build_corpus(workdir / "corpus", size="tiny", seed=args.seed)
    if args.model:
        return Path(args.model), corpus
    tokenizer = train_tokenizer(iter_texts([corpus["pretrain"], corpus["sft"]]), workdir / "model", vocab_size=2048)
    torch.manual_seed(args.seed)
    MiniMindForCausalLM(get_config(args.preset, vocab_size=len(tokenizer))).save_pretrained(workdir / "model")
    return workdir / "model", corpus


def build_trainer(args, folder: Path, corpus: dict, workdir: Path) -> PPOTrainer:
    tokenizer = load_tokenizer(folder)
    policy = AutoModelForCausalLM.from_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder)
    critic = load_reward_model(RLModelArguments(model_name_or_path=str(folder)), tokenizer)
    config = PPOConfig(
        output_dir=str(workdir / "ppo"),
        rollout_batch_size=args.batch_size,
        per_device_train_batch_size=args.batch_size // 2,
        max_completion_length=args.new_tokens,
        max_steps=args.steps,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=args.seed,
    )
    rewards = [
        GuardedReward(f, n) for f, n in zip(get_reward_functions(["accuracy", "format"]), ["accuracy", "format"])
    ]
    records = read_rl_records(corpus["rl"])
    trainer = PPOTrainer(config, policy, critic, rewards, tokenizer, records, ref_model=reference)
    trainer.create_optimizer_and_scheduler(num_training_steps=trainer.total_updates)
    return trainer


def timed_rollouts(trainer: PPOTrainer, records: list[dict], args) -> dict:
    """name -> list of (seconds, reply tokens) per round."""
    policy, config = trainer.policy, trainer.generation_config
    paths = {
        "generate (dynamic cache)": None,
        "PPO rollout (dynamic cache)": "dynamic",
        "PPO rollout (static cache)": "static",
    }
    if args.compile:
        paths["PPO rollout (static + compile)"] = "compile"

    def run(mode):
        if mode is None:  # the baseline: the project's batch decoding on the same prompts, no rollout tensors
            config.cache_implementation, config.compile_config = "dynamic", None
            torch.manual_seed(args.seed)
            with torch.inference_mode():
                completions = generate_completions(
                    policy,
                    trainer.processing_class,
                    trainer.prompt_ids(records),
                    args.new_tokens,
                    generation_config=config,
                )
            return sum(len(c.token_ids) + (c.finish_reason == FINISH_STOP) for c in completions)
        config.cache_implementation = "dynamic" if mode == "dynamic" else "static"
        config.compile_config = CompileConfig(fullgraph=False, mode="default") if mode == "compile" else None
        if config.compile_config is not None:
            config.compile_config._compile_all_devices = True
        return trainer.rollout(records, args.seed).mask.sum().item()

    times = {name: [] for name in paths}
    for round_index in range(args.rounds + 1):
        for name, mode in paths.items():
            start = time.perf_counter()
            tokens = run(mode)
            if round_index:  # round 0 warms up (and compiles)
                times[name].append((time.perf_counter() - start, tokens))
    config.cache_implementation, config.compile_config = "dynamic", None
    return times


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder, corpus = model_and_data(args, workdir)
        trainer = build_trainer(args, folder, corpus, workdir)
        records = read_rl_records(Path(corpus["eval"]) / "rl.jsonl", limit=args.batch_size)
        parameters = sum(p.numel() for p in trainer.policy.parameters())
        print(
            f"{folder if args.model else args.preset}: {parameters / 1e6:.1f}M parameters, {args.batch_size} "
            f"prompts, up to {args.new_tokens} new tokens, {args.threads} threads, {args.rounds} rounds"
        )
        times = timed_rollouts(trainer, records, args)
        rates = {
            name: statistics.median(tokens / seconds for seconds, tokens in rounds) for name, rounds in times.items()
        }
        baseline = rates["generate (dynamic cache)"]
        print(f"{'path':32} {'reply tokens/s':>15} {'vs generate':>12}")
        for name, rate in rates.items():
            print(f"{name:32} {rate:15,.0f} {rate / baseline:11.2f}x")
        shares, seconds = [], []
        for _ in range(args.steps):
            logs = trainer.ppo_step()
            trainer.state.global_step += 1
            shares.append(logs["generate_share"])
            seconds.append(logs["rollout_seconds"] + logs["update_seconds"])
        print(
            f"PPO step: {statistics.median(seconds):.2f} s median over {args.steps} steps, "
            f"{statistics.median(shares):.0%} of it in generate"
        )
        best = max((rate, name) for name, rate in rates.items() if name.startswith("PPO"))
        print(f"rollout speedup vs generate (dynamic cache): {best[0] / baseline:.2f}x ({best[1]})")


if __name__ == "__main__":
    main()
