"""The pipeline's report (the demo's and every profile's): every stage's result in one shape, written as
`report.json` and `report.md` (tables, curves, held-out numbers before and after, sample chats)."""

import json
import os
import platform
from pathlib import Path

import torch
import transformers
import trl

from recipes.training.callbacks import PLOT_FILE
from recipes.training.intervals import ITEMS, interval, share_interval, verdict, with_intervals

METRIC_MEANINGS = {
    "value [low, high] n=": "a held-out mean with its 95% interval (Wilson's for accuracies, t for rewards and KL) "
    "over n questions; a paired change is after minus before on the same questions (loss_vs_alone: with the teacher "
    "minus alone), claimed only when its interval excludes 0. It covers which questions were asked, not training "
    "noise: the same seed on a CPU with another kernel set (machine.cpu_capability) trains a slightly different model, "
    "whose numbers can fall outside it",
    "eval_loss": "cross-entropy per token on eval/pretrain.jsonl (held out: no sentence of it is in a training file)",
    "perplexity": "exp(eval_loss)",
    "document_loss": "the same cross-entropy per token taken document by document and averaged over documents, so it "
    "has an interval (eval_loss weighs each document by its tokens)",
    "alone (distill)": "the student trained without the teacher: the same preset, seed, data order, steps and "
    "learning rate, the label cross-entropy alone",
    "loss_vs_alone": "document_loss of the student trained with the teacher minus the same student trained alone, "
    "document by document: below 0 (shows down) the teacher helped",
    "completion_accuracy": "greedy completion of held-out statements (unseen operands, dates, units), whole answer "
    "exact; see per_family",
    "trained_fact_recall": "the same on facts the model was trained on (seen data: recall, not generalisation)",
    "loss (sft)": "cross-entropy on the assistant tokens of eval/sft.jsonl (held-out conversations)",
    "accuracy": "greedy chat replies to eval/rl.jsonl questions whose final answer is exactly right (all families, "
    "held-out fact rows included, which no model can know)",
    "task_accuracy": "the same over the families a model can generalise to (arithmetic, comparison, counting, units, "
    "dates)",
    "eot_rate": "share of those replies that end their turn with <|im_end|> within the token limit",
    "pairwise_accuracy": "held-out preference pairs (eval/dpo.jsonl) the reward model scores chosen above rejected; "
    "per kind of rejected reply below: a wrong answer, an unsure reply with no answer, or the question repeated",
    "preference_accuracy / margin": "the same pairs under DPO's implicit reward, and its mean chosen-rejected margin",
    "reward (ppo, grpo)": "greedy replies to the held-out questions scored by the stage's reward sources, summed: "
    "accuracy and format functions (0-1 each), plus the reward model's score for PPO; reward/<name> per source",
    "reply_tokens (ppo, grpo)": "tokens in each greedy reply to the held-out questions, averaged: a policy that games "
    "its reward by writing longer replies shows here",
    "kl": "KL(policy || SFT reference) of sampled held-out replies (PPO) or of training replies (GRPO, TRL's log), "
    "nats per reply summed over tokens (PPO) or per token (GRPO)",
    "tool_call_rate / tool_accuracy": "held-out calculator questions (eval/rl_tools.jsonl) answered greedily with the "
    "tool loop: share of replies that make a well-formed calculator call, share with the right final answer",
    "no_tool_accuracy": "the same calculator questions answered greedily with no tool offered: what the tool adds",
}
RUN_KEYS = ("steps", "tokens", "tokens_per_second", "train_loss", "output_dir")
# The held-out sides a stage entry may hold, the columns of its table: before and after training, and a baseline
# trained without what the stage adds (distillation's student trained alone).
HELD_OUT_SIDES = ("before", "after", "alone")
# The sample replies a stage's `after` may carry beside its numbers, and their names in the report.
AFTER_SAMPLES = {"samples": "chat_samples", "tool_samples": "tool_samples"}
# Held-out accuracies a side may break down by group, and the heading of each one's table in the report.
BREAKDOWNS = {
    "per_family": "family: held-out chat accuracy",
    "per_kind": "rejected reply: held-out pairwise accuracy",
}


def rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def numbers(side: dict) -> dict:
    """A before/after side without its lists and tables: numbers, and `{"value", "n", "ci_low", "ci_high"}` for
    each metric measured per question (`intervals.with_intervals`)."""
    side = with_intervals(side)
    return {
        key: rounded(value) for key, value in side.items() if is_interval(value) or not isinstance(value, (list, dict))
    }


def is_interval(value) -> bool:
    return isinstance(value, dict) and "ci_low" in value


def run_entry(result: dict) -> dict:
    """A training stage's report entry from the result every stage returns (steps, tokens, before, after,
    output_dir, ...): its run numbers, its curves, held-out numbers before and after, and the samples apart."""
    entry = {key: rounded(result[key]) for key in RUN_KEYS if result.get(key) is not None}
    entry["curves"] = f"{Path(result['output_dir']).name}/{PLOT_FILE}"
    entry["before"], entry["after"] = numbers(result["before"]), numbers(result["after"])
    entry["gains"] = result.get("gains") or {}
    details = {name: result["after"].get(key) for key, name in AFTER_SAMPLES.items()}
    details |= {key: value for key, value in result.items() if key.endswith(("_samples", "_per_family"))}
    details |= {key: breakdown_table(result["before"], result["after"], key) for key in BREAKDOWNS}
    details["mixture"] = result.get("mixture")  # what a --dataset_mixture run took of each source
    return entry | {key: value for key, value in details.items() if value}


def breakdown_table(before: dict, after: dict, key: str) -> dict:
    """A held-out accuracy per group (`per_family`: chat questions by task family; `per_kind`: preference pairs by
    what is wrong with the rejected reply) before and after, with the group's size, where both sides measured it."""
    if not (before.get(key) and after.get(key)):
        return {}
    return {
        name: {"n": after[f"{key}_n"][name], "before": before[key].get(name), "after": value}
        for name, value in after[key].items()
    }


def eval_headline(metrics: dict) -> dict:
    """The few numbers per model that the report's eval table shows, each accuracy with its n and 95% interval."""
    bpb = list(metrics["bits_per_byte"].values())
    mc = next(iter(metrics["multiple_choice"].values()), {})
    chat = next(iter(metrics["chat"].values()), {})
    per_question = chat.get(ITEMS) or {}
    return {
        "bits_per_byte": bpb[0] if bpb else None,
        "mc_accuracy": share_interval(mc["acc"], mc["questions"]) if mc else None,
        "chat_task_accuracy": interval(per_question["task_accuracy"]) if per_question.get("task_accuracy") else None,
        "eot_rate": interval(per_question["eot_rate"]) if per_question.get("eot_rate") else None,
    }


def cpu_name() -> str:
    """The CPU's model name where Linux gives it (`platform.processor()` is often empty there), else the arch."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a run's numbers depend on besides its seed. The CPU's kernel set (`cpu_capability`: AVX512, AVX2, ...)
    rounds floats its own way, so on another CPU the same seed trains a slightly different model."""
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu_name()})",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def format_value(value) -> str:
    if is_interval(value):
        return f"{format_value(value['value'])} [{value['ci_low']:.3g}, {value['ci_high']:.3g}] n={value['n']}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def stage_rows(name: str, metrics: dict) -> list[str]:
    """One markdown section per stage: its scalars, then before/after side by side."""
    lines = [f"## {name} ({metrics['seconds']} s)", ""]
    scalars = {
        k: v for k, v in metrics.items() if k != "seconds" and (is_interval(v) or not isinstance(v, (dict, list)))
    }
    lines += [f"- {key}: {format_value(value)}" for key, value in scalars.items()]
    if "curves" in metrics:
        lines += ["", f"![{name} training curves]({metrics['curves']})"]
    if "models" in metrics:
        lines += model_table(metrics)
    if "before" in metrics:
        sides = [side for side in HELD_OUT_SIDES if side in metrics]
        lines += ["", "| held-out metric | " + " | ".join(sides) + " |", "| --- |" + " ---: |" * len(sides)]
        for key in metrics["after"]:
            lines.append(f"| {key} | " + " | ".join(format_value(metrics[side].get(key)) for side in sides) + " |")
    if metrics.get("gains"):
        lines += gain_table(metrics["gains"])
    for key, header in BREAKDOWNS.items():
        if metrics.get(key):
            lines += ["", f"| {header} | n | before | after |", "| --- | ---: | ---: | ---: |"]
            for group, sides in metrics[key].items():
                before, after = format_value(sides["before"]), format_value(sides["after"])
                lines.append(f"| {group} | {sides['n']} | {before} | {after} |")
    if metrics.get("chat_samples"):
        lines += ["", "Held-out questions, answered greedily after this stage:", ""]
        lines += chat_lines(metrics["chat_samples"])
    for key, value in metrics.items():
        if key in scalars or key in (*HELD_OUT_SIDES, "gains", "models", "chat_samples", *BREAKDOWNS):
            continue
        if isinstance(value, (dict, list)):
            lines += ["", f"{key}:", "", "```json", json.dumps(value, ensure_ascii=False, indent=2), "```"]
    return lines + [""]


def gain_table(gains: dict) -> list[str]:
    """Paired changes on the same held-out questions (after minus before, or as the name says), with their 95%
    interval and what each shows."""
    lines = [
        "",
        "| paired change | diff | 95% interval | n | shows |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for key, gain in gains.items():
        lines.append(
            f"| {key} | {gain['diff']:+.4g} | [{gain['ci_low']:+.3g}, {gain['ci_high']:+.3g}] | {gain['n']} | "
            f"{verdict(gain)} |"
        )
    return lines


def model_table(metrics: dict) -> list[str]:
    columns = list(next(iter(metrics["models"].values())))
    lines = ["", "| model | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for model, values in metrics["models"].items():
        lines.append(f"| {model} | " + " | ".join(format_value(values[c]) for c in columns) + " |")
    return lines + ["", f"![held-out metrics per model]({metrics['chart']})"]


def chat_lines(samples: list[dict]) -> list[str]:
    """Question / reply pairs as a markdown list (replies kept on one line)."""
    lines = []
    systems = {sample.get("system") for sample in samples} - {None}
    if len(systems) == 1:
        lines += [f"System prompt: {next(iter(systems))}", ""]
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


def write_report(out: Path, stages: dict, title: str = "MiniMinds demo report") -> Path:
    """`report.json` (`{"machine": ..., "stages": {name: entry}}`) and `report.md`; returns the markdown path."""
    report = {"machine": machine(), "stages": stages}
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    total = sum(stage["seconds"] for stage in stages.values())
    lines = [
        f"# {title}",
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
