"""The whole pipeline on the built-in corpus, on a laptop CPU, ending in a report.

    make demo                                        # installs, then runs this
    python -m recipes.demo --output_dir runs/demo    # corpus, tokenizer, pretrain, model, sft, reward, dpo, ppo,
                                                     # grpo, eval

Each stage calls the same library function as its recipe. The report lands in `<output_dir>/report.md` and
`<output_dir>/report.json` (`{"stages": {"<stage>": {"seconds": ..., "before": {...}, "after": {...}, ...}}}`);
later stages add their entries. Every metric named held-out is measured on items no training file contains.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
import trl

from data_process.loading import iter_texts
from data_process.mc import write_builtin_mc
from data_process.synth import build_corpus
from data_process.text import compression_stats
from modeling_miniminds.tokenizer import load_tokenizer, train_tokenizer
from recipes.training.callbacks import PLOT_FILE
from recipes.training.cli import RecipeParser
from recipes.training.dpo import DPOModelArguments, DPOScriptArguments, DPOTrainingConfig, dpo
from recipes.training.eval_lm import evaluate_models
from recipes.training.evaluation import CompletionProbeCallback, read_probes
from recipes.training.grpo import GRPOScriptArguments, GRPOTrainingConfig, grpo
from recipes.training.ppo import PPOConfig, PPOModelArguments, ppo
from recipes.training.preference import PreferenceScriptArguments
from recipes.training.pretraining import PretrainConfig, PretrainModelArguments, PretrainScriptArguments, pretrain
from recipes.training.reward import RewardModelArguments, RewardTrainingConfig, reward
from recipes.training.rl import RLModelArguments, RLScriptArguments
from recipes.training.sft import SFTModelArguments, SFTRecipeConfig, SFTScriptArguments, sft

CONFIGS = Path(__file__).parent / "configs"
PRETRAIN_RECIPE = CONFIGS / "pretrain_tiny.yaml"
METRIC_MEANINGS = {
    "eval_loss": "cross-entropy per token on eval/pretrain.jsonl (held out: no sentence of it is in a training file)",
    "perplexity": "exp(eval_loss)",
    "completion_accuracy": "greedy completion of held-out statements (unseen operands, dates, units), whole answer "
    "exact; see per_family",
    "trained_fact_recall": "the same on facts the model was trained on (seen data: recall, not generalisation)",
    "loss (sft)": "cross-entropy on the assistant tokens of eval/sft.jsonl (held-out conversations)",
    "accuracy": "greedy chat replies to eval/rl.jsonl questions whose final answer is exactly right (all families, "
    "held-out fact rows included, which no model can know)",
    "task_accuracy": "the same over the families a model can generalise to (arithmetic, comparison, counting, units, "
    "dates)",
    "eot_rate": "share of those replies that end their turn with <|im_end|> within the token limit",
    "pairwise_accuracy": "held-out preference pairs (eval/dpo.jsonl) the reward model scores chosen above rejected",
    "preference_accuracy / margin": "the same pairs under DPO's implicit reward, and its mean chosen-rejected margin",
    "reward (ppo, grpo)": "greedy replies to the held-out questions scored by the stage's reward sources, summed: "
    "accuracy and format functions (0-1 each), plus the reward model's score for PPO; reward/<name> per source",
    "kl": "KL(policy || SFT reference) of sampled held-out replies (PPO) or of training replies (GRPO, TRL's log), "
    "nats per reply summed over tokens (PPO) or per token (GRPO)",
    "tool_call_rate / tool_accuracy": "held-out calculator questions (eval/rl_tools.jsonl) answered greedily with the "
    "tool loop: share of replies that make a well-formed calculator call, share with the right final answer",
}
# Steps of the post-training stages in the demo: enough to move the held-out numbers on a 2-core CPU.
DEMO_STEPS = {"sft": 300, "reward": 120, "dpo": 120, "ppo": 20, "grpo": 40}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo", help="where every stage writes (default: runs/demo)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"], help="built-in corpus size")
    parser.add_argument("--vocab_size", type=int, default=2048, help="demo tokenizer vocabulary (default: 2048)")
    parser.add_argument("--max_steps", type=int, default=None, help="cap pretraining steps (default: the recipe's)")
    parser.add_argument(
        "--stage_steps", type=int, default=None, help=f"steps of each post-training stage (default: {DEMO_STEPS})"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def stage_corpus(out: Path, size: str, seed: int) -> tuple[dict, dict]:
    paths = build_corpus(out / "data", size=size, seed=seed)
    manifest = json.loads((out / "data" / "manifest.json").read_text(encoding="utf-8"))
    metrics = {
        "size": size,
        "records": manifest["records"],
        "pretrain_mb": round(paths["pretrain"].stat().st_size / 2**20, 2),
    }
    return metrics, paths


def stage_tokenizer(out: Path, paths: dict, vocab_size: int) -> tuple[dict, Path]:
    folder = out / "tokenizer"
    tokenizer = train_tokenizer(iter_texts([paths["pretrain"], paths["sft"]]), folder, vocab_size=vocab_size)
    held_out = iter_texts([paths["eval"] / "pretrain.jsonl"])
    metrics = {"vocab_size": len(tokenizer), "compression_heldout": compression_stats(tokenizer, held_out)}
    return metrics, folder


def stage_pretrain(out: Path, paths: dict, tokenizer_dir: Path, max_steps: int | None, seed: int) -> tuple[dict, Path]:
    folder = out / "pretrain"
    argv = [
        "--config",
        str(PRETRAIN_RECIPE),
        "--dataset_name",
        str(paths["pretrain"]),
        "--eval_dataset_name",
        str(paths["eval"] / "pretrain.jsonl"),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        "--output_dir",
        str(folder),
        "--overwrite_output_dir",
        "true",
        "--seed",
        str(seed),
        "--report_to",
        "none",
    ]
    if max_steps is not None:
        argv += ["--max_steps", str(max_steps)]
    script_args, training_args, model_args = RecipeParser(
        (PretrainScriptArguments, PretrainConfig, PretrainModelArguments)
    ).parse_args_and_config(argv)
    probes = CompletionProbeCallback(load_tokenizer(tokenizer_dir), read_probes(paths["completion"]))
    result = pretrain(script_args, training_args, model_args, callbacks=[probes])
    metrics = {
        "preset": model_args.model_config,
        "parameters_m": round(result["num_parameters"] / 1e6, 3),
        "steps": result["global_step"],
        "tokens": result["num_tokens"],
        "tokens_per_second": round(result["tokens_per_second"], 1),
        "train_loss": result["train_loss"],
        "output_dir": str(folder),
        "curves": f"{folder.name}/{PLOT_FILE}",
        "before": heldout_metrics(result["eval_loss_first"], probes.before),
        "after": heldout_metrics(result["eval_loss"], probes.after),
        "completion_per_family": probes.after["per_family"],
    }
    return metrics, folder


def heldout_metrics(eval_loss: float, probes: dict) -> dict:
    return {
        "eval_loss": round(eval_loss, 4),
        "perplexity": round(torch.tensor(eval_loss).exp().item(), 3),
        "completion_accuracy": probes["accuracy"],
    }


RELOAD_SCRIPT = """
import json, sys
sys.modules["modeling_miniminds"] = None  # any import of MiniMinds now fails: the folder must carry its code
from recipes.training.evaluation import score_folder
print(json.dumps(score_folder(sys.argv[1], {"heldout_completion": sys.argv[2], "trained_fact_recall": sys.argv[3]})))
"""


def stage_model(model_dir: Path, paths: dict) -> tuple[dict, None]:
    """Reload the saved folder in a fresh Python where MiniMinds cannot be imported (trust_remote_code only) and
    score the held-out probes again, and the trained facts (seen data, reported as recall)."""
    command = [
        sys.executable,
        "-c",
        RELOAD_SCRIPT,
        str(model_dir),
        str(paths["completion"]),
        str(paths["trained_facts"]),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"Reloading {model_dir} through trust_remote_code failed:\n{result.stderr[-3000:]}")
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "model_class": scores["model_class"],
        "completion_accuracy": scores["heldout_completion"]["accuracy"],
        "trained_fact_recall": scores["trained_fact_recall"]["accuracy"],
        "samples": scores["heldout_completion"]["samples"],
    }, None


def run_recipe(argument_classes, argv: list, train, callbacks=None) -> dict:
    """Parse `argv` exactly as the stage's script would, then run the stage's library function."""
    script_args, training_args, model_args = RecipeParser(argument_classes).parse_args_and_config(map(str, argv))
    return train(script_args, training_args, model_args, callbacks=callbacks)


def common_argv(recipe: str, folder: Path, seed: int, steps: int | None) -> list:
    argv = [
        "--config",
        CONFIGS / recipe,
        "--output_dir",
        folder,
        "--overwrite_output_dir",
        "true",
        "--seed",
        seed,
        "--report_to",
        "none",
    ]
    return argv + (["--max_steps", steps] if steps else [])


def run_summary(result: dict, folder: Path) -> dict:
    keep = ("steps", "tokens", "tokens_per_second", "train_loss")
    summary = {
        key: round(result[key], 4) if isinstance(result[key], float) else result[key]
        for key in keep
        if result.get(key) is not None
    }
    return {**summary, "output_dir": str(folder), "curves": f"{folder.name}/{PLOT_FILE}"}


def stage_sft(out: Path, paths: dict, model_dir: Path, seed: int, steps: int) -> tuple[dict, Path]:
    folder = out / "sft"
    argv = common_argv("sft_tiny.yaml", folder, seed, steps) + [
        "--model_name_or_path",
        model_dir,
        "--dataset_name",
        paths["sft"],
        "--eval_dataset_name",
        paths["eval"] / "sft.jsonl",
        "--chat_eval_dataset",
        paths["eval"] / "rl.jsonl",
    ]
    result = run_recipe((SFTScriptArguments, SFTRecipeConfig, SFTModelArguments), argv, sft)
    metrics = {
        **run_summary(result, folder),
        "before": result["before"],
        "after": result["after"],
        "chat_per_family": result["chat_per_family"],
        "chat_samples": result["chat_samples"],
    }
    return metrics, folder


def stage_reward(out: Path, paths: dict, sft_dir: Path, seed: int, steps: int) -> tuple[dict, Path]:
    folder = out / "reward"
    argv = common_argv("reward_tiny.yaml", folder, seed, steps) + [
        "--model_name_or_path",
        sft_dir,
        "--dataset_name",
        paths["dpo"],
        "--eval_dataset_name",
        paths["eval"] / "dpo.jsonl",
    ]
    result = run_recipe((PreferenceScriptArguments, RewardTrainingConfig, RewardModelArguments), argv, reward)
    return {**run_summary(result, folder), "before": result["before"], "after": result["after"]}, folder


def stage_dpo(out: Path, paths: dict, sft_dir: Path, seed: int, steps: int) -> tuple[dict, Path]:
    folder = out / "dpo"
    argv = common_argv("dpo_tiny.yaml", folder, seed, steps) + [
        "--model_name_or_path",
        sft_dir,
        "--dataset_name",
        paths["dpo"],
        "--eval_dataset_name",
        paths["eval"] / "dpo.jsonl",
        "--chat_eval_dataset",
        paths["eval"] / "rl.jsonl",
    ]
    result = run_recipe((DPOScriptArguments, DPOTrainingConfig, DPOModelArguments), argv, dpo)
    return {**run_summary(result, folder), "before": result["before"], "after": result["after"]}, folder


def split_samples(result: dict) -> dict:
    """before/after without their sample lists (the report tables hold numbers), and the final samples apart."""
    numbers = {
        side: {k: v for k, v in result[side].items() if not isinstance(v, (list, dict))} for side in ("before", "after")
    }
    samples = result["after"].get("samples") or []
    tool_samples = result["after"].get("tool_samples") or []
    return {**numbers, "chat_samples": samples, **({"tool_samples": tool_samples} if tool_samples else {})}


def stage_ppo(out: Path, paths: dict, sft_dir: Path, reward_dir: Path, seed: int, steps: int) -> tuple[dict, Path]:
    folder = out / "ppo"
    argv = common_argv("ppo_tiny.yaml", folder, seed, steps) + [
        "--model_name_or_path",
        sft_dir,
        "--reward_model_name_or_path",
        reward_dir,
        "--dataset_name",
        paths["rl"],
        "--chat_eval_dataset",
        paths["eval"] / "rl.jsonl",
    ]
    result = run_recipe((RLScriptArguments, PPOConfig, PPOModelArguments), argv, ppo)
    return {**run_summary(result, folder), **split_samples(result)}, folder


def stage_grpo(out: Path, paths: dict, sft_dir: Path, seed: int, steps: int) -> tuple[dict, Path]:
    """GRPO on the verifiable questions. The calculator questions are asked before and after through the tool loop;
    training with the tool offered (`--use_tools true`) needs a model that can already write a call, which the
    0.7M-parameter demo model cannot (it stops inside the JSON arguments), so the demo trains without it."""
    folder = out / "grpo"
    argv = common_argv("grpo_tiny.yaml", folder, seed, steps) + [
        "--model_name_or_path",
        sft_dir,
        "--dataset_name",
        paths["rl"],
        "--chat_eval_dataset",
        paths["eval"] / "rl.jsonl",
        "--tool_eval_dataset",
        paths["eval_rl_tools"],
    ]
    result = run_recipe((GRPOScriptArguments, GRPOTrainingConfig, RLModelArguments), argv, grpo)
    return {**run_summary(result, folder), **split_samples(result)}, folder


def stage_eval(out: Path, paths: dict, model_dirs: list[Path]) -> tuple[dict, None]:
    """All language models side by side on the same held-out files: bits per byte, multiple choice, chat."""
    questions = sum(1 for _ in iter_texts([paths["eval"] / "rl.jsonl"]))  # as many as the corpus size's eval split
    mc = write_builtin_mc(paths["eval"], count=questions)
    results = evaluate_models(
        model_dirs,
        text_files=[paths["eval"] / "pretrain.jsonl"],
        mc_files=[mc["mc"]],
        chat_files=[paths["eval"] / "rl.jsonl"],
        output_dir=out / "eval",
    )
    table = {name: model_headline(metrics) for name, metrics in results["models"].items()}
    return {"models": table, "chart": "eval/eval_chart.png", "table": "eval/eval_table.md"}, None


def model_headline(metrics: dict) -> dict:
    """The few numbers per model that the report table shows."""
    bpb = list(metrics["bits_per_byte"].values())
    mc = next(iter(metrics["multiple_choice"].values()), {})
    chat = next(iter(metrics["chat"].values()), {})
    return {
        "bits_per_byte": bpb[0] if bpb else None,
        "mc_accuracy": mc.get("acc"),
        "chat_task_accuracy": chat.get("task_accuracy"),
        "eot_rate": chat.get("eot_rate"),
    }


def timed(stage, *args) -> tuple[dict, object]:
    """Run a stage, which returns (metrics, what the next stage needs), and put its wall time first."""
    start = time.perf_counter()
    metrics, artifact = stage(*args)
    return {"seconds": round(time.perf_counter() - start, 1), **metrics}, artifact


def machine() -> dict:
    return {
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def stage_rows(name: str, metrics: dict) -> list[str]:
    """One markdown section per stage: its scalars, then before/after side by side."""
    lines = [f"## {name} ({metrics['seconds']} s)", ""]
    scalars = {k: v for k, v in metrics.items() if k != "seconds" and not isinstance(v, (dict, list))}
    lines += [f"- {key}: {format_value(value)}" for key, value in scalars.items()]
    if "curves" in metrics:
        lines += ["", f"![{name} loss and learning rate]({metrics['curves']})"]
    if "models" in metrics:
        columns = list(next(iter(metrics["models"].values())))
        lines += ["", "| model | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
        for model, values in metrics["models"].items():
            lines.append(f"| {model} | " + " | ".join(format_value(values[c]) for c in columns) + " |")
        lines += ["", f"![held-out metrics per model]({metrics['chart']})"]
    if "before" in metrics:
        lines += ["", "| held-out metric | before | after |", "| --- | ---: | ---: |"]
        for key in metrics["after"]:
            before = format_value(metrics["before"].get(key))
            lines.append(f"| {key} | {before} | {format_value(metrics['after'][key])} |")
    if metrics.get("chat_samples"):
        lines += ["", "Held-out questions, answered greedily after this stage:", ""] + chat_lines(
            metrics["chat_samples"]
        )
    for key, value in metrics.items():
        if isinstance(value, (dict, list)) and key not in ("before", "after", "models", "chat_samples"):
            lines += ["", f"{key}:", "", "```json", json.dumps(value, ensure_ascii=False, indent=2), "```"]
    return lines + [""]


def chat_lines(samples: list[dict]) -> list[str]:
    """Question / reply pairs as a markdown list (replies kept on one line)."""
    lines = []
    for sample in samples:
        reply = sample["reply"].strip().replace("\n", " / ") or "(empty)"
        expected = f" (expected: {sample['answer']})" if "answer" in sample else ""
        lines += [f"- **user:** {sample['question']}{expected}", f"  **assistant:** {reply}"]
    return lines


def final_chat(stages: dict) -> list[str]:
    """The sample chat of the last stage that has one: what the pipeline's final model says."""
    name = next((n for n in reversed(list(stages)) if stages[n].get("chat_samples")), None)
    if name is None:
        return []
    return [f"## Sample chat with the final model ({name})", ""] + chat_lines(stages[name]["chat_samples"]) + [""]


def write_report(out: Path, stages: dict) -> Path:
    report = {"machine": machine(), "stages": stages}
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    total = sum(stage["seconds"] for stage in stages.values())
    lines = [
        "# MiniMinds demo report",
        "",
        f"{len(stages)} stages in {total:.0f} s on {report['machine']['device']}, "
        f"{report['machine']['threads']} threads.",
        "",
        "| stage | seconds |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {metrics['seconds']} |" for name, metrics in stages.items()]
    lines += ["", "What the metrics mean:", ""] + [f"- {key}: {meaning}" for key, meaning in METRIC_MEANINGS.items()]
    lines.append("")
    for name, metrics in stages.items():
        lines += stage_rows(name, metrics)
    lines += final_chat(stages)
    lines += ["Machine:", "", "```json", json.dumps(report["machine"], indent=2), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = {}
    stages["corpus"], paths = timed(stage_corpus, out, args.size, args.seed)
    stages["tokenizer"], tokenizer_dir = timed(stage_tokenizer, out, paths, args.vocab_size)
    stages["pretrain"], model_dir = timed(stage_pretrain, out, paths, tokenizer_dir, args.max_steps, args.seed)
    stages["model"], _ = timed(stage_model, model_dir, paths)
    steps = {name: args.stage_steps or default for name, default in DEMO_STEPS.items()}
    stages["sft"], sft_dir = timed(stage_sft, out, paths, model_dir, args.seed, steps["sft"])
    stages["reward"], reward_dir = timed(stage_reward, out, paths, sft_dir, args.seed, steps["reward"])
    stages["dpo"], dpo_dir = timed(stage_dpo, out, paths, sft_dir, args.seed, steps["dpo"])
    stages["ppo"], ppo_dir = timed(stage_ppo, out, paths, sft_dir, reward_dir, args.seed, steps["ppo"])
    stages["grpo"], grpo_dir = timed(stage_grpo, out, paths, sft_dir, args.seed, steps["grpo"])
    stages["eval"], _ = timed(stage_eval, out, paths, [model_dir, sft_dir, dpo_dir, ppo_dir, grpo_dir])
    report = write_report(out, stages)
    print(report.read_text(encoding="utf-8"))
    return stages


if __name__ == "__main__":
    main()
