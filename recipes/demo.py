"""The whole pipeline on the built-in corpus, on a laptop CPU, ending in a report.

    make demo                                        # installs, then runs this
    python -m recipes.demo --output_dir runs/demo    # corpus, tokenizer, pretrain, model, distill, sft, reward,
                                                     # dpo, ppo, grpo, eval

Each training stage is parsed by its script's own parser from `recipes/configs/<stage>_tiny.yaml` (run sizes there,
knobs in the stage's dataclasses; the demo passes only paths and the seed) and runs the script's library function.
`--max_steps` / `--stage_steps` shorten the run (the tests). The report lands in `<output_dir>/report.md` and
`<output_dir>/report.json` (`{"stages": {"<stage>": {"seconds": ..., "before": {...}, "after": {...}, ...}}}`);
later stages add their entries. Every metric named held-out is measured on items no training file contains: the
corpus's eval/ split, or its dev/ split with `--split dev`, which is where the demo's settings are chosen.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from data_process.loading import iter_texts
from data_process.mc import write_builtin_mc
from data_process.synth import build_corpus
from data_process.text import compression_stats
from modeling_miniminds.tokenizer import load_tokenizer, train_tokenizer
from recipes.training import distill, dpo, grpo, ppo, pretraining, reward, sft
from recipes.training.eval_lm import evaluate_models
from recipes.training.evaluation import read_probes
from recipes.training.intervals import ITEMS, interval, paired_gain
from recipes.training.probes import completion_probe, document_loss_probe
from recipes.training.report import eval_headline, numbers, run_entry, write_report

CONFIGS = Path(__file__).parent / "configs"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo", help="where every stage writes (default: runs/demo)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"], help="built-in corpus size")
    parser.add_argument("--vocab_size", type=int, default=2048, help="demo tokenizer vocabulary (default: 2048)")
    parser.add_argument("--max_steps", type=int, default=None, help="cap pretraining steps (default: the recipe's)")
    parser.add_argument(
        "--stage_steps", type=int, default=None, help="steps of each post-training stage (default: each recipe's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split",
        default="eval",
        choices=["eval", "dev"],
        help="held-out split every stage is measured on: eval for the report (default), dev while choosing settings",
    )
    return parser.parse_args(argv)


def stage_corpus(out: Path, size: str, seed: int, split: str) -> tuple[dict, dict]:
    """The built-in corpus; `paths["held_out"]` is the folder of the split the stages are measured on."""
    paths = build_corpus(out / "data", size=size, seed=seed)
    paths["held_out"] = paths[split]
    manifest = json.loads((out / "data" / "manifest.json").read_text(encoding="utf-8"))
    metrics = {
        "size": size,
        "held_out_split": split,
        "records": manifest["records"],
        "pretrain_mb": round(paths["pretrain"].stat().st_size / 2**20, 2),
    }
    return metrics, paths


def stage_tokenizer(out: Path, paths: dict, vocab_size: int) -> tuple[dict, Path]:
    folder = out / "tokenizer"
    tokenizer = train_tokenizer(iter_texts([paths["pretrain"], paths["sft"]]), folder, vocab_size=vocab_size)
    held_out = iter_texts([paths["held_out"] / "pretrain.jsonl"])
    metrics = {"vocab_size": len(tokenizer), "compression_heldout": compression_stats(tokenizer, held_out)}
    return metrics, folder


def recipe_args(stage, recipe: str, folder: Path, seed: int, steps: int | None, **paths) -> tuple:
    """The stage's arguments, parsed by the stage's own parser from its `<stage>_tiny.yaml`: run sizes come from
    the recipe and knobs from the stage's dataclasses; the demo passes only where things are (and test sizes)."""
    flags = {**paths, "output_dir": folder, "overwrite_output_dir": "true", "seed": seed}
    if steps is not None:
        flags["max_steps"] = steps
    argv = ["--config", str(CONFIGS / recipe)] + [
        str(item) for key, value in flags.items() for item in (f"--{key}", value)
    ]
    return stage.make_parser().parse_args_and_config(argv)


def stage_pretrain(out: Path, paths: dict, tokenizer_dir: Path, seed: int, steps: int | None) -> tuple[dict, Path]:
    folder = out / "pretrain"
    script_args, training_args, model_args = recipe_args(
        pretraining,
        "pretrain_tiny.yaml",
        folder,
        seed,
        steps,
        dataset_name=paths["pretrain"],
        eval_dataset_name=paths["held_out"] / "pretrain.jsonl",
        tokenizer_name_or_path=tokenizer_dir,
    )
    probe = completion_probe(load_tokenizer(tokenizer_dir), read_probes(paths["held_out"] / "completion.jsonl"))
    result = pretraining.pretrain(script_args, training_args, model_args, probes=[probe])
    heldout = {
        "before": heldout_metrics(result["before"]),
        "after": heldout_metrics(result["after"]),
        "completion_per_family": result["after"]["completion_per_family"],
    }
    model = {"preset": model_args.model_config, "parameters_m": round(result["num_parameters"] / 1e6, 3)}
    return model | run_entry(result | heldout), folder


def heldout_metrics(metrics: dict) -> dict:
    return {
        "eval_loss": round(metrics["eval_loss"], 4),
        "perplexity": round(metrics["perplexity"], 3),
        "completion_accuracy": metrics["completion_accuracy"],
        ITEMS: metrics[ITEMS],
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
        str(paths["held_out"] / "completion.jsonl"),
        str(paths["trained_facts"]),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"Reloading {model_dir} through trust_remote_code failed:\n{result.stderr[-3000:]}")
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "model_class": scores["model_class"],
        "completion_accuracy": interval(scores["heldout_completion"][ITEMS]["accuracy"]),
        "trained_fact_recall": interval(scores["trained_fact_recall"][ITEMS]["accuracy"]),
        "samples": scores["heldout_completion"]["samples"],
    }, None


def stage_distill(out: Path, paths: dict, teacher_dir: Path, seed: int, steps: int | None) -> tuple[dict, None]:
    """The pretrained model teaches a student half its width (`distill_tiny.yaml`), and the same student (preset,
    seed, data order, steps, learning rate) is trained alone with alpha 1, where only the label CE counts and the
    teacher never runs: `loss_vs_alone` is the held-out loss with the teacher minus alone, document by document."""
    held_out = paths["held_out"] / "pretrain.jsonl"
    flags = {"dataset_name": paths["pretrain"], "eval_dataset_name": held_out, "teacher_name_or_path": teacher_dir}
    taught_args = recipe_args(distill, "distill_tiny.yaml", out / "distill", seed, steps, **flags)
    alone_args = recipe_args(distill, "distill_tiny.yaml", out / "distill-alone", seed, steps, **flags, alpha=1.0)
    documents = list(iter_texts([held_out]))
    probe = document_loss_probe(load_tokenizer(teacher_dir), documents, taught_args[0].block_size)
    taught = distill.distill(*taught_args, probes=[probe])
    alone = distill.distill(*alone_args, probes=[probe])
    loss_vs_alone = paired_gain(alone["after"][ITEMS]["document_loss"], taught["after"][ITEMS]["document_loss"])
    entry = run_entry(taught)
    student = {
        "preset": taught_args[2].model_config,
        "parameters_m": round(taught["num_parameters"] / 1e6, 3),
        "teacher": teacher_dir.name,
        "alpha": taught_args[1].alpha,
        "temperature": taught_args[1].temperature,
    }
    alone_entry = {"alone": numbers(alone["after"]), "gains": entry["gains"] | {"loss_vs_alone": loss_vs_alone}}
    return student | entry | alone_entry, None


def stage_run(stage, out: Path, seed: int, steps: int | None, **paths) -> tuple[dict, Path]:
    """A post-training stage as `recipes/<name>.py --config recipes/configs/<name>_tiny.yaml` runs it (the stage
    module's function of the same name), reported from the result every stage returns."""
    name = stage.__name__.rsplit(".", 1)[-1]
    result = getattr(stage, name)(*recipe_args(stage, f"{name}_tiny.yaml", out / name, seed, steps, **paths))
    return run_entry(result), out / name


def stage_eval(out: Path, paths: dict, model_dirs: list[Path]) -> tuple[dict, None]:
    """All language models side by side on the same held-out files: bits per byte, multiple choice, chat."""
    held_out = paths["held_out"]
    questions = sum(1 for _ in iter_texts([held_out / "rl.jsonl"]))  # as many as the corpus size's eval split
    mc = write_builtin_mc(held_out, count=questions, split=held_out.name)
    results = evaluate_models(
        model_dirs,
        text_files=[held_out / "pretrain.jsonl"],
        mc_files=[mc["mc"]],
        chat_files=[held_out / "rl.jsonl"],
        output_dir=out / "eval",
    )
    table = {name: eval_headline(metrics) for name, metrics in results["models"].items()}
    return {"models": table, "chart": "eval/eval_chart.png", "table": "eval/eval_table.md"}, None


# Seconds each stage took in `make demo` on this project's 2-core CPU machine; the ETA scales what is left by how fast
# this run has gone so far, so a faster machine sees a shorter one.
EXPECTED_SECONDS = {
    "corpus": 5.8,
    "tokenizer": 2.5,
    "pretrain": 212,
    "model": 10.1,
    "distill": 39,
    "sft": 173,
    "reward": 39,
    "dpo": 71,
    "ppo": 66,
    "grpo": 41,
    "eval": 43,
}


class Stages:
    """The demo's stages run in order: a banner with the overall ETA before each, its wall time first in its entry."""

    def __init__(self):
        self.entries, self.start = {}, time.perf_counter()

    def eta(self) -> float:
        done = sum(EXPECTED_SECONDS[name] for name in self.entries)
        left = sum(seconds for name, seconds in EXPECTED_SECONDS.items() if name not in self.entries)
        elapsed = time.perf_counter() - self.start
        return left * (elapsed / done if done else 1.0)

    def banner(self, name: str) -> str:
        index = list(EXPECTED_SECONDS).index(name) + 1
        elapsed = time.perf_counter() - self.start
        return f"==> demo stage {index}/{len(EXPECTED_SECONDS)}: {name} ({clock(elapsed)} so far, about {clock(self.eta())} left)"

    def run(self, name: str, stage, *args, **kwargs):
        """Run a stage, which returns (metrics, what the next stage needs); keep its metrics, return the rest."""
        print(self.banner(name), flush=True)
        start = time.perf_counter()
        metrics, artifact = stage(*args, **kwargs)
        self.entries[name] = {"seconds": round(time.perf_counter() - start, 1), **metrics}
        return artifact


def clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = {"out": out, "seed": args.seed, "steps": args.stage_steps}
    stages = Stages()
    paths = stages.run("corpus", stage_corpus, out, args.size, args.seed, args.split)
    tokenizer_dir = stages.run("tokenizer", stage_tokenizer, out, paths, args.vocab_size)
    model_dir = stages.run("pretrain", stage_pretrain, out, paths, tokenizer_dir, args.seed, args.max_steps)
    stages.run("model", stage_model, model_dir, paths)
    stages.run("distill", stage_distill, out, paths, model_dir, args.seed, args.stage_steps)
    eval_sft, eval_dpo, eval_rl = (paths["held_out"] / name for name in ("sft.jsonl", "dpo.jsonl", "rl.jsonl"))
    sft_dir = stages.run(
        "sft",
        stage_run,
        sft,
        **run,
        model_name_or_path=model_dir,
        dataset_name=paths["sft"],
        eval_dataset_name=eval_sft,
        chat_eval_dataset=eval_rl,
    )
    reward_dir = stages.run(
        "reward",
        stage_run,
        reward,
        **run,
        model_name_or_path=sft_dir,
        dataset_name=paths["dpo"],
        eval_dataset_name=eval_dpo,
    )
    dpo_dir = stages.run(
        "dpo",
        stage_run,
        dpo,
        **run,
        model_name_or_path=sft_dir,
        dataset_name=paths["dpo"],
        eval_dataset_name=eval_dpo,
        chat_eval_dataset=eval_rl,
    )
    ppo_dir = stages.run(
        "ppo",
        stage_run,
        ppo,
        **run,
        model_name_or_path=sft_dir,
        reward_model_name_or_path=reward_dir,
        dataset_name=paths["rl"],
        chat_eval_dataset=eval_rl,
    )
    # The calculator questions are asked before and after through the tool loop; training with the tool offered
    # (--use_tools true) needs a model that can already write a call, which the 0.7M-parameter demo model cannot
    # (it stops inside the JSON arguments), so the demo trains GRPO without it.
    grpo_dir = stages.run(
        "grpo",
        stage_run,
        grpo,
        **run,
        model_name_or_path=sft_dir,
        dataset_name=paths["rl"],
        chat_eval_dataset=eval_rl,
        tool_eval_dataset=paths["held_out"] / "rl_tools.jsonl",
    )
    stages.run("eval", stage_eval, out, paths, [model_dir, sft_dir, dpo_dir, ppo_dir, grpo_dir])
    report = write_report(out, stages.entries)
    print(report.read_text(encoding="utf-8"))
    return stages.entries


if __name__ == "__main__":
    main()
