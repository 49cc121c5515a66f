"""The whole pipeline on the built-in corpus, on a laptop CPU, ending in a report.

    make demo                                        # installs, then runs this
    python -m recipes.demo --output_dir runs/demo    # stages: corpus, tokenizer, pretrain, model

Each stage calls the same library function as its recipe. The report lands in `<output_dir>/report.md` and
`<output_dir>/report.json` (`{"stages": {"<stage>": {"seconds": ..., <metrics>}}}`); later stages add their entries.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from data_process.io import read_jsonl
from data_process.synth import build_corpus
from recipes import pretrain
from recipes.tokenizer import compression_stats, train_tokenizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo", help="where every stage writes (default: runs/demo)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"], help="built-in corpus size")
    parser.add_argument("--vocab_size", type=int, default=2048, help="demo tokenizer vocabulary (default: 2048)")
    parser.add_argument("--max_steps", type=int, default=None, help="cap pretraining steps (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def stage_corpus(out: Path, size: str, seed: int) -> tuple[dict, dict]:
    paths = build_corpus(out / "data", size=size, seed=seed)
    written = json.loads((out / "data" / "manifest.json").read_text(encoding="utf-8"))["records"]
    metrics = {f"{kind}_records": written[kind] for kind in ("pretrain", "sft", "dpo", "rl")}
    metrics["pretrain_mb"] = round(paths["pretrain"].stat().st_size / 2**20, 2)
    return metrics, paths


def stage_tokenizer(out: Path, paths: dict, vocab_size: int) -> tuple[dict, Path]:
    folder = out / "tokenizer"
    tokenizer = train_tokenizer([paths["pretrain"], paths["sft"]], folder, vocab_size=vocab_size)
    held_out = [record["text"] for record in read_jsonl(paths["eval"] / "pretrain.jsonl", validate="pretrain")]
    metrics = {"vocab_size": len(tokenizer), "compression": compression_stats(tokenizer, held_out)}
    return metrics, folder


def stage_pretrain(out: Path, paths: dict, tokenizer_dir: Path, max_steps: int | None, seed: int) -> tuple[dict, Path]:
    folder = out / "pretrain"
    argv = [
        "--config", str(Path(pretrain.__file__).parent / "configs" / "pretrain_tiny.yaml"),
        "--dataset_name", str(paths["pretrain"]),
        "--eval_dataset_name", str(paths["eval"] / "pretrain.jsonl"),
        "--tokenizer_name_or_path", str(tokenizer_dir),
        "--output_dir", str(folder),
        "--overwrite_output_dir", "true",
        "--seed", str(seed),
        "--report_to", "none",
    ]  # fmt: skip
    if max_steps is not None:
        argv += ["--max_steps", str(max_steps)]
    result = pretrain.main(*pretrain.make_parser().parse_args_and_config(argv))
    keep = ("train_loss_first", "train_loss", "eval_loss_first", "eval_loss", "perplexity", "tokens_per_second")
    return {key: result[key] for key in keep if result.get(key) is not None}, folder


def stage_model(model_dir: Path, paths: dict) -> tuple[dict, None]:
    """Reload the saved folder in a fresh Python where MiniMinds cannot be imported (trust_remote_code only) and
    complete held-out facts."""
    command = [sys.executable, "-m", "recipes.complete_facts", "--without_package", "--model", str(model_dir)]
    command += ["--eval_file", str(paths["eval"] / "pretrain.jsonl")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"Reloading {model_dir} through trust_remote_code failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), None


def timed(stage, *args) -> tuple[dict, object]:
    """Run a stage, which returns (metrics, what the next stage needs), and add its wall time to the metrics."""
    start = time.perf_counter()
    metrics, artifact = stage(*args)
    return {"seconds": round(time.perf_counter() - start, 2), **metrics}, artifact


def format_number(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def write_report(out: Path, stages: dict) -> Path:
    (out / "report.json").write_text(json.dumps({"stages": stages}, ensure_ascii=False, indent=2), encoding="utf-8")
    lines = ["# MiniMinds demo report", "", "| stage | seconds | key metrics |", "| --- | ---: | --- |"]
    for name, metrics in stages.items():
        shown = {k: v for k, v in metrics.items() if k != "seconds" and not isinstance(v, (dict, list))}
        cells = ", ".join(f"{k}={format_number(v)}" for k, v in shown.items())
        lines.append(f"| {name} | {metrics['seconds']} | {cells} |")
    for name, metrics in stages.items():
        for key, value in metrics.items():
            if isinstance(value, (dict, list)):
                lines += ["", f"## {name}: {key}", "", "```json", json.dumps(value, ensure_ascii=False, indent=2), "```"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = {}
    stages["corpus"], paths = timed(stage_corpus, out, args.size, args.seed)
    stages["tokenizer"], tokenizer_dir = timed(stage_tokenizer, out, paths, args.vocab_size)
    stages["pretrain"], model_dir = timed(stage_pretrain, out, paths, tokenizer_dir, args.max_steps, args.seed)
    stages["model"], _ = timed(stage_model, model_dir, paths)
    report = write_report(out, stages)
    print(report.read_text(encoding="utf-8"))
    return stages


if __name__ == "__main__":
    main()
