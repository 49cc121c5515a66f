"""Evaluating saved models side by side: the arguments, `evaluate_models()` (which `recipes/eval.py` and the demo
call), and the table, chart and results files it writes.

Per model: bits per UTF-8 byte and token perplexity on each held-out text file (`recipes.training.scoring` says which
tokens count), multiple-choice accuracy on each question file, and greedy chat accuracy with the end-of-turn rate on
each file of chat probes (`recipes.training.evaluation.chat_accuracy`).
"""

import datetime
import gc
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM

from data_process.jsonl import atomic_write, read_jsonl
from data_process.loading import iter_texts, load_text_dataset
from data_process.mc import Question, read_questions
from modeling_miniminds.cli.paths import check_name_or_path, from_pretrained_or_explain
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.cli import RecipeParser
from recipes.training.evaluation import chat_accuracy
from recipes.training.models import count_parameters
from recipes.training.scoring import MC_STYLES, context_length, multiple_choice_metrics, text_metrics

logger = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
TABLE_FILE = "eval_table.md"
CHART_FILE = "eval_chart.png"
MC_LABELS = {"acc": "accuracy", "acc_norm": "accuracy per char", "acc_bytes": "accuracy per byte"}


@dataclass
class EvalScriptArguments:
    """What to evaluate on, and where the results go."""

    text_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Held-out text for bits per byte: JSONL (`text`), .txt (a document a line) or parquet."},
    )
    mc_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Multiple-choice questions: C-Eval, CMMLU or MMLU layout, as CSV, JSONL or parquet."},
    )
    mc_dev_files: list[str] = field(
        default_factory=list, metadata={"help": "Few-shot examples for --num_fewshot, matched to questions by subject."}
    )
    chat_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Chat probes in the rl format (prompt messages, answer, family), e.g. eval/rl.jsonl."},
    )
    output_dir: str = field(
        default="runs/eval", metadata={"help": f"Where {RESULTS_FILE}, {TABLE_FILE} and {CHART_FILE} go."}
    )
    results_file: str | None = field(
        default=None, metadata={"help": "Also append this run's results to this JSONL file, one line per run."}
    )


@dataclass
class EvalConfig:
    """How models are loaded and scored."""

    max_length: int | None = field(
        default=None, metadata={"help": "Window in tokens; default each model's context length (as lm-eval)."}
    )
    stride: int | None = field(
        default=None,
        metadata={"help": "Tokens scored per window after the first; default --max_length (lm-eval's windows)."},
    )
    max_docs: int | None = field(default=None, metadata={"help": "Score at most this many documents a text file."})
    num_fewshot: int = field(default=0, metadata={"help": "Dev examples of the same subject before each question."})
    mc_style: Literal["cloze", "letters"] = field(
        default="cloze",
        metadata={"help": "cloze: score each choice's text; letters: list the choices and score the letters A-D."},
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Longest greedy chat reply, in tokens."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass."})
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32", metadata={"help": "auto: the dtype the folder was saved in."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run modeling code shipped in a folder (not needed for MiniMinds folders)."}
    )


@dataclass
class EvalModelArguments:
    """The models compared."""

    model_name_or_path: list[str] = field(
        metadata={"help": "Model folders (or Hub ids), one column each in the table, in this order."}
    )


class EvalParser(RecipeParser):
    """RecipeParser whose help shows the evaluation's three groups."""

    def _help_groups(self) -> list[tuple[str, list[str]]]:
        return [
            ("models", [f.name for f in fields(self.model_cls)]),
            ("data and output", [f.name for f in fields(self.script_cls)]),
            ("scoring", [f.name for f in fields(self.config_cls)]),
        ]


def unique_names(paths) -> list[str]:
    """Short names for the table: the last path part, or the whole path where two last parts collide."""
    names = [Path(str(p).rstrip("/")).name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _check_files(flag: str, paths) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--{flag} {path}: no such file")


def read_documents(path, max_docs: int | None = None) -> list[str]:
    """The documents of a text file: JSONL records (any project format), .txt lines, or a parquet `text` column."""
    if Path(path).suffix == ".parquet":
        return list(load_text_dataset(path)["text"])[:max_docs]
    return list(iter_texts([path], max_docs=max_docs))


def load_model(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False):
    """A saved model (in eval mode, on the GPU if there is one) and its tokenizer."""
    name = check_name_or_path(name_or_path, "model")
    tokenizer = load_tokenizer(name)
    model = from_pretrained_or_explain(
        AutoModelForCausalLM,
        name,
        "model",
        dtype=dtype if dtype == "auto" else getattr(torch, dtype),
        trust_remote_code=trust_remote_code,
    )
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


@dataclass
class EvalInputs:
    """Everything read from disk before the first model loads, so a bad file fails in seconds."""

    texts: dict[str, list[str]]
    questions: dict[str, list[Question]]
    dev: list[Question]
    chats: dict[str, list[dict]]

    @classmethod
    def read(cls, text_files, mc_files, mc_dev_files, chat_files, config: EvalConfig) -> "EvalInputs":
        for flag, paths in (
            ("text_files", text_files),
            ("mc_files", mc_files),
            ("mc_dev_files", mc_dev_files),
            ("chat_files", chat_files),
        ):
            _check_files(flag, paths)
        if not (text_files or mc_files or chat_files):
            raise ValueError("nothing to evaluate: pass --text_files, --mc_files or --chat_files")
        if config.num_fewshot and not mc_dev_files:
            raise ValueError(f"--num_fewshot {config.num_fewshot} needs --mc_dev_files to draw the examples from")
        if config.mc_style not in MC_STYLES:
            raise ValueError(f"--mc_style: expected one of {', '.join(MC_STYLES)}, got {config.mc_style!r}")
        if config.stride is not None and config.max_length is not None and config.stride > config.max_length:
            raise ValueError(f"--stride {config.stride} is larger than --max_length {config.max_length}")
        text_names, mc_names, chat_names = unique_names(text_files), unique_names(mc_files), unique_names(chat_files)
        return cls(
            texts={name: read_documents(path, config.max_docs) for name, path in zip(text_names, text_files)},
            questions={name: read_questions(path) for name, path in zip(mc_names, mc_files)},
            dev=[question for path in mc_dev_files for question in read_questions(path)],
            chats={name: list(read_jsonl(path, validate="rl")) for name, path in zip(chat_names, chat_files)},
        )


def evaluate_model(model, tokenizer, inputs: EvalInputs, config: EvalConfig) -> dict:
    """Every metric of one model on every input file."""
    max_length = context_length(model, config.max_length)
    stride = min(config.stride or max_length, max_length)
    text = {
        name: text_metrics(model, tokenizer, documents, max_length, stride, config.batch_size)
        for name, documents in inputs.texts.items()
    }
    multiple_choice = {
        name: multiple_choice_metrics(
            model, tokenizer, questions, inputs.dev, config.num_fewshot, config.mc_style, max_length, config.batch_size
        )
        for name, questions in inputs.questions.items()
    }
    chat = {
        name: chat_accuracy(model, tokenizer, records, max_new_tokens=config.max_new_tokens)
        for name, records in inputs.chats.items()
    }
    return {
        "bits_per_byte": {name: metrics["bits_per_byte"] for name, metrics in text.items()},
        "text": text,
        "multiple_choice": multiple_choice,
        "chat": chat,
    }


def evaluate_models(
    model_dirs,
    text_files=(),
    mc_files=(),
    chat_files=(),
    output_dir=None,
    mc_dev_files=(),
    results_file=None,
    config: EvalConfig | None = None,
) -> dict:
    """Score each model on each file; with `output_dir`, write the results, table and chart there. Returns
    `{"models": {name: {"path", "parameters", "seconds", "bits_per_byte", "text", "multiple_choice", "chat"}},
    "settings": {...}}`."""
    config = config or EvalConfig()
    model_dirs = [str(path) for path in model_dirs]
    if not model_dirs:
        raise ValueError("no model to evaluate: pass --model_name_or_path")
    for path in model_dirs:
        check_name_or_path(path, "model")
    inputs = EvalInputs.read(text_files, mc_files, mc_dev_files, chat_files, config)
    results = {"models": {}, "settings": _settings(text_files, mc_files, mc_dev_files, chat_files, config)}
    for name, path in zip(unique_names(model_dirs), model_dirs):
        start = time.perf_counter()
        model, tokenizer = load_model(path, config.dtype, config.trust_remote_code)
        logger.info("evaluating %s (%s)", name, path)
        metrics = evaluate_model(model, tokenizer, inputs, config)
        results["models"][name] = {
            "path": path,
            "parameters": count_parameters(model),
            "seconds": round(time.perf_counter() - start, 1),
            **metrics,
        }
        del model
        gc.collect()
    if output_dir is not None:
        write_outputs(results, output_dir)
    if results_file is not None:
        append_results(results, results_file)
    return results


def _settings(text_files, mc_files, mc_dev_files, chat_files, config: EvalConfig) -> dict:
    files = {"text_files": text_files, "mc_files": mc_files, "mc_dev_files": mc_dev_files, "chat_files": chat_files}
    return {**{key: [str(p) for p in paths] for key, paths in files.items()}, **asdict(config)}


def table_rows(results: dict) -> list[dict]:
    """One row per metric and file: label, whether higher is better, a value per model, and the chance line."""
    models = list(results["models"].values())
    if not models:
        return []
    rows = []
    for name in models[0]["text"]:
        values = [m["text"][name]["bits_per_byte"] for m in models]
        rows.append({"label": f"bits per byte, {name}", "higher_is_better": False, "values": values})
    for name, first in models[0]["multiple_choice"].items():
        for metric, label in MC_LABELS.items():
            values = [m["multiple_choice"][name][metric] for m in models]
            rows.append(
                {"label": f"{label}, {name}", "higher_is_better": True, "values": values, "chance": first["chance"]}
            )
    for name in models[0]["chat"]:
        for metric, label in (("task_accuracy", "task accuracy"), ("eot_rate", "end-of-turn rate")):
            rows.append(
                {
                    "label": f"{label}, {name}",
                    "higher_is_better": True,
                    "values": [m["chat"][name][metric] for m in models],
                }
            )
    return rows


def _best(row: dict) -> float | None:
    present = [v for v in row["values"] if v is not None]
    return (max if row["higher_is_better"] else min)(present) if present else None


def format_table(results: dict) -> str:
    """A markdown table, one column per model; the best value of a row in bold where the models differ."""
    names = list(results["models"])
    lines = [f"| metric | better | {' | '.join(names)} |", f"|---|---|{'---:|' * len(names)}"]
    for row in table_rows(results):
        label = row["label"] + (f" (chance {row['chance']:.2f})" if "chance" in row else "")
        best = _best(row) if len(set(row["values"])) > 1 else None
        cells = ["–" if v is None else f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in row["values"]]
        lines.append(f"| {label} | {'↑' if row['higher_is_better'] else '↓'} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, png_path) -> None:
    """One panel per metric, one bar per model (the same colour in every panel), a dashed chance line where one
    applies, so which stage helped and which hurt reads at a glance."""
    from matplotlib.figure import Figure

    rows = table_rows(results)
    names = list(results["models"])
    columns = min(4, len(rows))
    fig = Figure(figsize=(3.2 * columns, 3.0 * -(-len(rows) // columns)), layout="constrained")
    axes = list(fig.subplots(-(-len(rows) // columns), columns, squeeze=False).flat)
    colors = [f"C{i % 10}" for i in range(len(names))]
    for ax, row in zip(axes, rows, strict=False):
        values = [float("nan") if v is None else v for v in row["values"]]
        bars = ax.bar(range(len(names)), values, color=colors)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        if "chance" in row:
            ax.axhline(row["chance"], color="gray", linestyle="--", linewidth=1, label="chance")
            ax.legend(loc="lower right", fontsize=7)
        ax.set_ylim(0, 1.08 if row["higher_is_better"] else 1.15 * max(values, default=1))  # rates, or bpb
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8, ha="right")
        ax.set_title(f"{row['label']}\n({'higher' if row['higher_is_better'] else 'lower'} is better)", fontsize=9)
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    fig.savefig(png_path, dpi=100)


def write_outputs(results: dict, output_dir) -> dict[str, Path]:
    """`eval_results.json`, `eval_table.md` and, when there is a metric, `eval_chart.png` in `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": output_dir / RESULTS_FILE, "table": output_dir / TABLE_FILE, "chart": output_dir / CHART_FILE}
    with atomic_write(paths["results"]) as handle:
        handle.write(json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    with atomic_write(paths["table"]) as handle:
        handle.write(format_table(results))
    if table_rows(results):
        plot_results(results, paths["chart"])
    return paths


def append_results(results: dict, results_file) -> None:
    """One JSON line per run, stamped with the time, so runs on different days line up in one file."""
    path = Path(results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"time": stamp, **results}, ensure_ascii=False) + "\n")


def evaluate(script_args: EvalScriptArguments, config: EvalConfig, model_args: EvalModelArguments) -> dict:
    """The recipe: evaluate, write the files, print the table."""
    results = evaluate_models(
        model_args.model_name_or_path,
        script_args.text_files,
        script_args.mc_files,
        script_args.chat_files,
        script_args.output_dir,
        script_args.mc_dev_files,
        script_args.results_file,
        config,
    )
    print(format_table(results), end="")
    print(f"results: {Path(script_args.output_dir) / RESULTS_FILE}")
    return results
