"""One pipeline runner: the stages of a profile in order, a plan before anything trains, a marker per finished
stage so a second run skips it and resumes the interrupted one, and the report card at the end.

    python -m recipes.pipeline --profile demo                     # what `make demo` runs
    python -m recipes.pipeline --profile minimind-64m --data hub --plan_only
    python -m recipes.pipeline --profile minimind-26m --data data/minimind --set sft.learning_rate=2e-4
    python -m recipes.pipeline --profile minimind-moe --dry_run   # every stage, a few steps, CPU, seconds

A stage that finishes writes `<output_dir>/.pipeline/<stage>.json` (its report entry, what the next stages need,
and the settings it ran with) by an atomic rename. With `NPROC=8` each training stage runs under `accelerate
launch` with 8 processes; started under a launcher itself, every process runs the stages and the first one writes.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modeling_miniminds import get_config
from modeling_miniminds.cli import FlagParser, command_main, did_you_mean
from recipes.training.args import launcher_world_size
from recipes.training.eval_lm import EvalConfig
from recipes.training.pipeline_estimate import build_plan, parameters
from recipes.training.pipeline_plan import clock, format_plan, mfu, peak_tflops
from recipes.training.pipeline_profiles import (
    DRY_RUN_EVAL,
    PROFILES,
    TRAINING_STAGES,
    Profile,
    dry_run_flags,
    stage_overrides,
)
from recipes.training.pipeline_stages import NEEDS, STAGES, Run
from recipes.training.report import write_report
from recipes.training.trainer import TrainingInterrupted

MARKERS = ".pipeline"


class Markers:
    """`<output_dir>/.pipeline/<stage>.json` per finished stage: its entry, its artifact and its settings, written
    whole or not at all (a temporary file renamed)."""

    def __init__(self, out: Path):
        self.folder = out / MARKERS

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def read(self, stage: str, settings: dict) -> dict | None:
        """The finished stage's marker, None when it has not finished; one finished with other settings is an
        error (its output would not be what this run asks for)."""
        path = self.path(stage)
        if not path.is_file():
            return None
        marker = json.loads(path.read_text(encoding="utf-8"))
        if marker["settings"] != normalised(settings):
            raise ValueError(
                f"{path}: {stage} finished with other settings ({changed(marker['settings'], normalised(settings))}); "
                "pass --restart to run it again, or another --output_dir"
            )
        return marker

    def write(self, stage: str, settings: dict, entry: dict, artifact) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = {"settings": normalised(settings), "entry": entry, "artifact": artifact}
        staged = self.folder / f".{stage}.json.tmp"
        staged.write_text(json.dumps(marker, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
        os.replace(staged, self.path(stage))

    def clear(self, stages) -> None:
        for stage in stages:
            self.path(stage).unlink(missing_ok=True)


def normalised(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))


def changed(old: dict, new: dict) -> str:
    keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    return ", ".join(f"{key}: {old.get(key)!r} then, {new.get(key)!r} now" for key in keys)


@dataclass
class Banners:
    """A banner with the overall ETA before each stage: the `expected` seconds of the stages left, scaled by how
    fast the stages run so far went when they were measured on another machine (`scale`, the demo's), as they are
    when the warm-up timed them here. Stages an earlier run finished count neither way, nor does the time the plan
    took (`paused`: its warm-up is no stage's pace)."""

    label: str
    expected: dict[str, float]
    stages: tuple[str, ...]
    scale: bool = True
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    paused: float = 0.0

    def eta(self) -> float:
        done = sum(self.expected.get(name, 0) for name in self.finished)
        left = sum(self.expected.get(name, 0) for name in self.stages if name not in self.finished + self.skipped)
        elapsed = time.perf_counter() - self.start - self.paused
        return left * (elapsed / done if done and self.scale else 1.0)

    def banner(self, name: str) -> str:
        index = self.stages.index(name) + 1
        elapsed = time.perf_counter() - self.start
        return (
            f"==> {self.label} stage {index}/{len(self.stages)}: {name} "
            f"({clock(elapsed)} so far, about {clock(self.eta())} left)"
        )


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def say(text: str) -> None:
    """Print on the first process only: under a launcher every process runs the pipeline."""
    if rank() == 0:
        print(text, flush=True)


def gpu_numbers(entry: dict, artifact, peak: float | None, processes: int) -> dict:
    """Peak memory and MFU of a training stage that just ran on a GPU (nothing on CPU)."""
    if not torch.cuda.is_available() or not entry.get("tokens_per_second") or not artifact:
        return {}
    numbers = {"peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}
    utilisation = mfu(parameters(get_config(artifact), active=True), entry["tokens_per_second"], peak, processes)
    return numbers | ({"mfu": round(utilisation, 4)} if utilisation is not None else {})


@dataclass
class Pipeline:
    """One run of a profile's chosen stages: skip what finished, print the plan, run the rest, write the report."""

    run: Run
    profile: Profile
    chosen: tuple[str, ...]
    argv: list[str]
    settings: dict
    nproc: int = 1
    peak: float | None = None
    plan: bool = True
    plan_only: bool = False
    cpu: bool = False

    def __post_init__(self):
        self.markers = Markers(self.run.out)
        self.done, self.entries = {}, {}

    def stage_settings(self, stage: str) -> dict:
        """The run's settings and the stage's own flags, which its marker must match to count as finished."""
        return self.settings | {f"{stage}.{key}": value for key, value in self.run.flags.get(stage, {}).items()}

    def check_needs(self) -> None:
        """Every chosen stage's inputs come from a chosen stage or one finished earlier; fail before any runs."""
        available = set(self.chosen) | {s for s in self.profile.stages if self.markers.path(s).is_file()}
        for stage in self.chosen:
            for need in NEEDS.get(stage, ()):
                if need not in available:
                    raise ValueError(
                        f"--stages: {stage} starts from {need}'s output, which no earlier run in {self.run.out} "
                        f"finished; add {need} to --stages"
                    )

    def execute(self) -> dict:
        """Run the chosen stages that have not finished; the plan comes once the corpus is there (its files are
        what it measures). Returns the report's entries ({} with `plan_only`)."""
        self.check_needs()
        expected = self.profile.expected_seconds
        banners = Banners(self.profile.name, expected or {}, self.chosen, scale=expected is not None)
        for stage in self.profile.stages:
            marker = self.markers.read(stage, self.stage_settings(stage))
            if marker is not None:
                self.done[stage], self.entries[stage] = marker["artifact"], marker["entry"]
                if stage in self.chosen:
                    banners.skipped.append(stage)
                    say(f"==> {self.profile.name} stage {stage}: finished in an earlier run, skipped")
                continue
            if stage not in self.chosen:
                continue
            if stage != "corpus" and self.plan:
                planning = time.perf_counter()
                plans = self.print_plan()
                if self.plan_only:
                    return {}
                banners.expected = expected or {plan.stage: plan.seconds or 0 for plan in plans}
                banners.paused += time.perf_counter() - planning
            say(banners.banner(stage))
            self.run_stage(stage)
            banners.finished.append(stage)
        if self.plan_only:
            self.print_plan()
            return {}
        if rank() == 0:
            report = write_report(self.run.out, self.entries, title=f"MiniMinds {self.profile.name} report")
            print(report.read_text(encoding="utf-8"))
        return self.entries

    def print_plan(self):
        """The plan, once, on the first process: each chosen stage's file, tokens, steps, disk and ETA."""
        self.plan = False
        if rank() != 0 or launcher_world_size() > 1:
            return []
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not self.cpu else "cpu"
        peak = self.peak if device != "cpu" else None
        plans = build_plan(self.run, self.chosen, self.done, device, self.nproc, peak)
        print(f"Plan for {self.profile.name} in {self.run.out} ({self.nproc} process(es)):\n", flush=True)
        print(format_plan(plans, device, peak) + "\n", flush=True)
        return plans

    def run_stage(self, stage: str) -> None:
        """Run a stage here (every process under a launcher) or under `accelerate launch` with NPROC processes;
        the first process writes its marker, the others wait for it to read what the next stages need."""
        settings = self.stage_settings(stage)
        if stage in TRAINING_STAGES and self.nproc > 1 and launcher_world_size() == 1:
            self.launch(stage)
            marker = self.markers.read(stage, settings)
        elif rank() != 0 and stage not in TRAINING_STAGES:
            marker = self.wait_for(stage, settings)
        else:
            marker = self.run_here(stage, settings)
        self.done[stage], self.entries[stage] = marker["artifact"], marker["entry"]

    def run_here(self, stage: str, settings: dict) -> dict:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics, artifact = STAGES[stage](self.run, self.done)
        entry = {"seconds": round(time.perf_counter() - start, 1), **metrics}
        if stage in TRAINING_STAGES and not self.cpu:
            entry |= gpu_numbers(entry, artifact, self.peak, launcher_world_size())
        if rank() == 0:
            self.markers.write(stage, settings, entry, artifact)
        return {"entry": entry, "artifact": artifact}

    def wait_for(self, stage: str, settings: dict) -> dict:
        while (marker := self.markers.read(stage, settings)) is None:
            time.sleep(1.0)
        return marker

    def launch(self, stage: str) -> None:
        command = launch_command(self.argv, stage, self.nproc)
        print("   " + shlex.join(command), flush=True)
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            raise RuntimeError(f"stage {stage} under accelerate launch exited with {code}: {shlex.join(command)}")


def without_flags(argv: list[str], flags) -> list[str]:
    """`argv` less each of `flags` and the values after it."""
    kept, skipping = [], False
    for arg in argv:
        if arg.partition("=")[0] in flags:
            skipping = "=" not in arg
        elif not (skipping and not arg.startswith("--")):
            skipping = False
            kept.append(arg)
    return kept


def launch_command(argv: list[str], stage: str, nproc: int) -> list[str]:
    """This run again, for one stage, under `accelerate launch` with `nproc` processes (which skip the plan: this
    process printed it)."""
    kept = without_flags(argv, ("--stages", "--nproc", "--launched"))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc)]
    return [*launcher, "-m", "recipes.pipeline", *kept, "--stages", stage, "--nproc", "1", "--launched"]


def make_parser() -> FlagParser:
    parser = FlagParser(description=__doc__, allow_abbrev=False)  # a mistyped flag must not start a long run
    parser.add_argument("--profile", default="demo", choices=sorted(PROFILES), help="which stage recipes run")
    parser.add_argument("--output_dir", default=None, help="where every stage writes; unset: runs/<profile>")
    parser.add_argument(
        "--data",
        default="builtin",
        help="training files: builtin (the built-in corpus), a folder of upstream MiniMind's .jsonl files, or hub "
        "(fetched from jingyaogong/minimind_dataset; HF_ENDPOINT picks a mirror)",
    )
    parser.add_argument(
        "--tokenizer", default=None, help="a tokenizer folder (e.g. upstream's) instead of training one"
    )
    parser.add_argument("--stages", nargs="+", default=None, help="stages to run, in pipeline order; unset: all")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.FLAG=VALUE",
        help="a flag of one stage's recipe, e.g. --set sft.learning_rate=2e-4 (repeatable)",
    )
    parser.add_argument("--plan_only", action="store_true", help="print the plan and stop")
    parser.add_argument(
        "--dry_run", action="store_true", help="every stage a few steps on the built-in tiny corpus, on CPU"
    )
    parser.add_argument(
        "--restart", action="store_true", help="run the chosen stages from scratch, finished or interrupted"
    )
    parser.add_argument("--peak_tflops", type=float, default=None, help="the GPU's peak, when its name is not known")
    parser.add_argument(
        "--nproc",
        type=int,
        default=int(os.environ.get("NPROC", "1")),
        help="processes per training stage, started with accelerate launch (the default comes from $NPROC)",
    )
    parser.add_argument(
        "--size",
        default=None,
        choices=["tiny", "small", "medium"],
        help="built-in corpus size; unset: small (tiny with --dry_run)",
    )
    parser.add_argument("--vocab_size", type=int, default=None, help="tokenizer vocabulary; unset: the profile's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split",
        default="eval",
        choices=["eval", "dev"],
        help="held-out split every stage is measured on: eval for the report, dev while choosing settings",
    )
    # Set by the runner on the one stage it launches under accelerate: no plan (the runner printed it).
    parser.add_argument("--launched", action="store_true", help=argparse.SUPPRESS)
    return parser


def chosen_stages(requested, profile: Profile, tokenizer: str | None, dry_run: bool = False) -> tuple[str, ...]:
    """The requested stages in pipeline order (unset: the profile's, optional ones only in a dry run), the corpus
    always (it is where the files are) and the tokenizer stage when `--tokenizer` names one (it only loads it and
    measures its compression)."""
    default = [stage for stage in profile.stages if dry_run or stage not in profile.optional]
    requested = list(requested or default)
    unknown = [name for name in requested if name not in profile.stages]
    if unknown:
        raise ValueError(
            f"--stages {unknown[0]}: not a stage of profile {profile.name}{did_you_mean(unknown[0], profile.stages)} "
            f"(its stages: {', '.join(profile.stages)})"
        )
    always = {"corpus", "tokenizer"} if tokenizer else {"corpus"}
    return tuple(s for s in profile.stages if s in requested or s in always)


def build_pipeline(argv: list[str]) -> Pipeline:
    args = make_parser().parse_args(argv)
    if args.restart and launcher_world_size() > 1 and not args.launched:
        raise ValueError(
            "--restart under a launcher: its processes would race to forget the finished stages; run with NPROC=N "
            "instead (the runner launches each stage), or into another --output_dir"
        )
    profile = PROFILES[args.profile]
    out = Path(args.output_dir or f"runs/{profile.name}{'-dry_run' if args.dry_run else ''}")
    flags = dry_run_flags(profile, out, max(args.nproc, launcher_world_size())) if args.dry_run else {}
    for stage, values in stage_overrides(args.overrides, profile.stages).items():
        flags[stage] = flags.get(stage, {}) | values
    run = Run(
        out=out,
        recipes=profile.recipes,
        seed=args.seed,
        size=args.size or ("tiny" if args.dry_run else "small"),
        split=args.split,
        vocab_size=args.vocab_size or (512 if args.dry_run else profile.vocab_size),
        data="builtin" if args.dry_run else args.data,
        tokenizer=args.tokenizer,
        tokenizer_docs=profile.tokenizer_docs,
        grpo_reward_model=profile.grpo_reward_model,
        resume=not args.restart,
        flags=flags,
        eval_config=DRY_RUN_EVAL if args.dry_run else EvalConfig(),
    )
    run.stages = chosen_stages(args.stages, profile, args.tokenizer, args.dry_run)
    settings = {
        "profile": profile.name,
        "data": run.data,
        "size": run.size,
        "seed": run.seed,
        "split": run.split,
        "vocab_size": run.vocab_size,
        "tokenizer": run.tokenizer,
    }
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    pipeline = Pipeline(
        run,
        profile,
        run.stages,
        argv,
        settings,
        nproc=args.nproc,
        peak=args.peak_tflops or peak_tflops(device),
        plan=not args.launched,
        plan_only=args.plan_only,
        cpu=args.dry_run,
    )
    if args.restart and rank() == 0:
        pipeline.markers.clear(run.stages)
    return pipeline


@command_main(errors=(ValueError, OSError, RuntimeError), exit=True)
def main(argv=None) -> dict:
    """Run the pipeline; a mistake is one `error:` line, Ctrl-C (or SIGTERM) ends the running stage at a checkpoint
    and prints the command that resumes it: this one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return build_pipeline(argv).execute()
    except TrainingInterrupted as err:
        print(f"{err}\nresume with: {shlex.join(['python', '-m', 'recipes.pipeline', *argv])}", file=sys.stderr)
        raise SystemExit(130) from None
