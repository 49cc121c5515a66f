"""The stages of a pipeline run, each `stage(run, done) -> (report entry, artifact)`: `done` holds the artifacts of
the stages before it (the corpus's paths, the tokenizer and model folders), and the artifact is what the stages after
it need. Training stages are parsed by the stage's own parser from the profile's recipe file, so a run's sizes are
the recipe's and its knobs the stage's; the runner passes where things are, the seed and the `--set` overrides.

Every held-out number is measured on the built-in corpus's eval split (or dev with `split="dev"`), whatever the
training files: the same questions for every profile.
"""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from data_process.loading import iter_texts
from data_process.mc import write_builtin_mc
from data_process.synth import build_corpus
from data_process.text import compression_stats
from modeling_miniminds.tokenizer import load_tokenizer, train_tokenizer
from recipes.training import distill, dpo, grpo, ppo, pretraining, reward, sft
from recipes.training.eval_lm import EvalConfig, evaluate_models
from recipes.training.evaluation import read_probes
from recipes.training.intervals import ITEMS, interval, paired_gain
from recipes.training.pipeline_data import fetch_hub, route_folder
from recipes.training.probes import completion_probe, document_loss_probe, tool_probe
from recipes.training.report import eval_headline, numbers, run_entry

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Held-out calculator questions SFT answers through the tool loop before and after, and the longest reply (a call
# is about 45 tokens); tool_grpo's recipe sets its own.
SFT_TOOL_QUESTIONS, TOOL_REPLY_TOKENS = 100, 96
STAGE_MODULES = {
    "pretrain": pretraining,
    "distill": distill,
    "sft": sft,
    "dpo": dpo,
    "reward": reward,
    "ppo": ppo,
    "grpo": grpo,
    "agent": grpo,  # GRPO with the tools each record declares (the recipe sets --use_tools)
    "tool_grpo": grpo,  # GRPO on the calculator questions with the tool offered (the recipe sets --use_tools)
}


def recipe_kind(stage: str) -> str:
    """The first stage that runs the same recipe ("grpo" for agent and tool_grpo): what its steps are shaped like."""
    return next(name for name, module in STAGE_MODULES.items() if module is STAGE_MODULES[stage])


# The models the eval stage puts side by side, in pipeline order.
EVALUATED = ("pretrain", "sft", "dpo", "ppo", "grpo")


@dataclass
class Run:
    """What every stage of one pipeline run shares. `recipes` maps a training stage to its recipe file, `flags` to
    the flags the runner adds (overrides, dry-run caps), `data` is `builtin`, `hub` or a folder."""

    out: Path
    recipes: dict[str, str]
    seed: int = 0
    size: str = "small"
    split: str = "eval"
    vocab_size: int = 2048
    data: str = "builtin"
    tokenizer: str | None = None
    tokenizer_docs: int | None = None
    resume: bool = True
    grpo_reward_model: bool = False
    stages: tuple[str, ...] = ()
    flags: dict[str, dict] = field(default_factory=dict)
    eval_config: EvalConfig = field(default_factory=EvalConfig)


def recipe_args(run: Run, stage: str, folder: Path, **paths) -> tuple:
    """The stage's arguments, parsed by its own parser from its recipe: paths, the seed, resume or overwrite, then
    the run's flags for the stage, which win."""
    flags = {**paths, "output_dir": folder, "overwrite_output_dir": "true", "seed": run.seed}
    if run.resume:
        flags["resume_from_checkpoint"] = "auto"
    argv = ["--config", str(CONFIGS / run.recipes[stage])]
    for key, value in (flags | run.flags.get(stage, {})).items():
        argv += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return STAGE_MODULES[stage].make_parser().parse_args_and_config(argv)


def training_files(run: Run, corpus: dict) -> dict[str, str]:
    """The file each training stage reads: the built-in corpus's, or upstream's from `--data`; tool_grpo always
    reads the built-in calculator questions (upstream has none)."""
    calculator = {"tool_grpo": corpus["rl_tools"]}
    if run.data == "builtin":
        return {
            "pretrain": corpus["pretrain"],
            "distill": corpus["pretrain"],
            "sft": corpus["sft"],
            "reward": corpus["dpo"],
            "dpo": corpus["dpo"],
            "ppo": corpus["rl"],
            "grpo": corpus["rl"],
            "agent": corpus["agent"],
            **calculator,
        }
    routed = fetch_hub(run.stages) if run.data == "hub" else route_folder(run.data, run.stages)
    return {stage: str(path) for stage, path in routed.items()} | calculator


def stage_corpus(run: Run, done: dict) -> tuple[dict, dict]:
    """The built-in corpus (training data, unless `--data` names other files, and the held-out split every stage
    is measured on) and each stage's training file."""
    paths = {key: str(value) for key, value in build_corpus(run.out / "data", size=run.size, seed=run.seed).items()}
    paths["held_out"] = paths[run.split]
    manifest = json.loads((run.out / "data" / "manifest.json").read_text(encoding="utf-8"))
    metrics = {
        "size": run.size,
        "held_out_split": run.split,
        "records": manifest["records"],
        "pretrain_mb": round(Path(paths["pretrain"]).stat().st_size / 2**20, 2),
    }
    files = training_files(run, paths)
    if run.data != "builtin":
        metrics["files"] = {
            stage: f"{path} ({Path(path).stat().st_size / 2**20:.1f} MB)" for stage, path in files.items()
        }
    return metrics, paths | {"files": files}


def stage_tokenizer(run: Run, done: dict) -> tuple[dict, str]:
    """A byte-level BPE tokenizer trained on the pretraining text and the SFT chats as the template lays them out,
    or `--tokenizer` (e.g. upstream's) as is; its compression on held-out text either way."""
    corpus = done["corpus"]
    held_out = iter_texts([Path(corpus["held_out"]) / "pretrain.jsonl"])
    if run.tokenizer:
        tokenizer = load_tokenizer(run.tokenizer)
        metrics = {"tokenizer": run.tokenizer, "vocab_size": len(tokenizer)}
        return metrics | {"compression_heldout": compression_stats(tokenizer, held_out)}, run.tokenizer
    folder = run.out / "tokenizer"
    files = corpus["files"]
    texts = chain(
        *(
            iter_texts([files[stage]], run.tokenizer_docs, render_chats=True)
            for stage in ("pretrain", "sft")
            if stage in files
        )
    )
    tokenizer = train_tokenizer(texts, folder, vocab_size=run.vocab_size)
    metrics = {"vocab_size": len(tokenizer), "compression_heldout": compression_stats(tokenizer, held_out)}
    return metrics, str(folder)


def stage_pretrain(run: Run, done: dict) -> tuple[dict, str]:
    held_out, tokenizer_dir = Path(done["corpus"]["held_out"]), done["tokenizer"]
    script_args, training_args, model_args = recipe_args(
        run,
        "pretrain",
        run.out / "pretrain",
        dataset_name=done["corpus"]["files"]["pretrain"],
        eval_dataset_name=held_out / "pretrain.jsonl",
        tokenizer_name_or_path=tokenizer_dir,
    )
    probe = completion_probe(load_tokenizer(tokenizer_dir), read_probes(held_out / "completion.jsonl"))
    result = pretraining.pretrain(script_args, training_args, model_args, probes=[probe])
    heldout = {
        "before": heldout_metrics(result["before"]),
        "after": heldout_metrics(result["after"]),
        "completion_per_family": result["after"]["completion_per_family"],
    }
    model = {"preset": model_args.model_config, "parameters_m": round(result["num_parameters"] / 1e6, 3)}
    return model | run_entry(result | heldout), training_args.output_dir


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
print(json.dumps(score_folder(sys.argv[1], json.loads(sys.argv[2]))))
"""


def stage_model(run: Run, done: dict) -> tuple[dict, None]:
    """Reload the saved folder in a fresh Python where MiniMinds cannot be imported (trust_remote_code only) and
    score the held-out probes again, and, when it trained on the built-in corpus, its facts (seen data, reported
    as recall)."""
    corpus = done["corpus"]
    probes = {"heldout_completion": str(Path(corpus["held_out"]) / "completion.jsonl")}
    if run.data == "builtin":
        probes["trained_fact_recall"] = corpus["trained_facts"]
    command = [sys.executable, "-c", RELOAD_SCRIPT, done["pretrain"], json.dumps(probes)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"Reloading {done['pretrain']} through trust_remote_code failed:\n{result.stderr[-3000:]}")
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    entry = {
        "model_class": scores["model_class"],
        "completion_accuracy": interval(scores["heldout_completion"][ITEMS]["accuracy"]),
    }
    if "trained_fact_recall" in scores:
        entry["trained_fact_recall"] = interval(scores["trained_fact_recall"][ITEMS]["accuracy"])
    return entry | {"samples": scores["heldout_completion"]["samples"]}, None


def stage_distill(run: Run, done: dict) -> tuple[dict, None]:
    """The pretrained model teaches a smaller student (the profile's distill recipe), and the same student (preset,
    seed, data order, steps, learning rate) is trained alone with alpha 1, where only the label CE counts and the
    teacher never runs: `loss_vs_alone` is the held-out loss with the teacher minus alone, document by document."""
    teacher_dir = Path(done["pretrain"])
    held_out = Path(done["corpus"]["held_out"]) / "pretrain.jsonl"
    flags = {
        "dataset_name": done["corpus"]["files"]["distill"],
        "eval_dataset_name": held_out,
        "teacher_name_or_path": teacher_dir,
    }
    taught_args = recipe_args(run, "distill", run.out / "distill", **flags)
    alone_args = recipe_args(run, "distill", run.out / "distill-alone", **flags, alpha=1.0)
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


def post_training_paths(run: Run, stage: str, done: dict) -> dict:
    """Where a post-training stage starts from and what it reads: the model before it, its file, the held-out
    files it reports on, and for PPO (and GRPO when the run says so) the reward model when one was trained.

    The reward model starts from the DPO model when the run trained one (else from SFT): DPO has learnt from the same
    pairs which replies are preferred, and on the demo's dev split the reward model ranked more held-out pairs right
    from it (0.8925 against 0.85, paired +0.0425 [+0.012, +0.073]; +0.0225 [-0.010, +0.055] with seed 1), most of
    it on wrong answers (0.71 against 0.59 of 148)."""
    held_out, files = Path(done["corpus"]["held_out"]), done["corpus"]["files"]
    chat_eval = held_out / "rl.jsonl"
    if stage == "sft":
        paths = {"model_name_or_path": done["pretrain"], "eval_dataset_name": held_out / "sft.jsonl"}
        return paths | {"dataset_name": files["sft"], "chat_eval_dataset": chat_eval}
    model = (done.get("dpo") or done["sft"]) if stage == "reward" else done["sft"]
    start = {"model_name_or_path": model, "dataset_name": files[stage]}
    if stage == "reward":
        return start | {"eval_dataset_name": held_out / "dpo.jsonl"}
    if stage == "dpo":
        return start | {"eval_dataset_name": held_out / "dpo.jsonl", "chat_eval_dataset": chat_eval}
    if done.get("reward") and (stage == "ppo" or run.grpo_reward_model):
        start["reward_model_name_or_path"] = done["reward"]
    if stage == "ppo":
        return start | {"chat_eval_dataset": chat_eval}
    if stage == "agent":
        return start | {"tool_eval_dataset": held_out / "agent.jsonl"}
    if stage == "tool_grpo":
        return start | {"tool_eval_dataset": held_out / "rl_tools.jsonl"}
    # The calculator questions are asked before and after through the tool loop too; GRPO trains without the tool
    # (tool_grpo trains with it).
    return start | {"chat_eval_dataset": chat_eval, "tool_eval_dataset": held_out / "rl_tools.jsonl"}


def stage_post_training(stage: str):
    """A post-training stage as `recipes/<stage>.py --config recipes/configs/<recipe>` runs it (the stage module's
    function of the same name), reported from the result every stage returns. SFT also asks the held-out calculator
    questions through the tool loop before and after (the calculator chats are part of its data), numbers the SFT
    recipe alone has no flag for."""

    def run_stage(run: Run, done: dict) -> tuple[dict, str]:
        args = recipe_args(run, stage, run.out / stage, **post_training_paths(run, stage, done))
        module = STAGE_MODULES[stage]
        probes = {}
        if stage == "sft":
            records = read_probes(Path(done["corpus"]["held_out"]) / "rl_tools.jsonl")[:SFT_TOOL_QUESTIONS]
            probes["probes"] = [tool_probe(load_tokenizer(done["tokenizer"]), records, TOOL_REPLY_TOKENS)]
        result = getattr(module, module.__name__.rsplit(".", 1)[1])(*args, **probes)
        return run_entry(result), args[1].output_dir

    return run_stage


def stage_eval(run: Run, done: dict) -> tuple[dict, None]:
    """All language models side by side on the same held-out files: bits per byte, multiple choice, chat."""
    held_out = Path(done["corpus"]["held_out"])
    questions = sum(1 for _ in iter_texts([held_out / "rl.jsonl"]))  # as many as the corpus size's eval split
    mc = write_builtin_mc(held_out, count=questions, split=held_out.name)
    results = evaluate_models(
        [done[name] for name in EVALUATED if done.get(name)],
        text_files=[held_out / "pretrain.jsonl"],
        mc_files=[mc["mc"]],
        chat_files=[held_out / "rl.jsonl"],
        output_dir=run.out / "eval",
        config=run.eval_config,
    )
    table = {name: eval_headline(metrics) for name, metrics in results["models"].items()}
    return {"models": table, "chart": "eval/eval_chart.png", "table": "eval/eval_table.md"}, None


STAGES = {
    "corpus": stage_corpus,
    "tokenizer": stage_tokenizer,
    "pretrain": stage_pretrain,
    "model": stage_model,
    "distill": stage_distill,
    **{name: stage_post_training(name) for name in STAGE_MODULES if name not in ("pretrain", "distill")},
    "eval": stage_eval,
}
# The stages whose artifacts a stage starts from; reward also takes the DPO model and ppo the reward model when
# there is one.
NEEDS = {
    "tokenizer": ("corpus",),
    "pretrain": ("tokenizer",),
    "model": ("pretrain",),
    "distill": ("pretrain",),
    "sft": ("pretrain",),
    "reward": ("sft",),
    "dpo": ("sft",),
    "ppo": ("sft",),
    "grpo": ("sft",),
    "agent": ("sft",),
    "tool_grpo": ("sft",),
    "eval": ("corpus",),
}
