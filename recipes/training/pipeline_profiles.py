"""The pipeline's profiles (a named set of stage recipes) and what a run changes in them: `--set` overrides,
checked against each stage's own flags, and the dry run's caps and shrunk model."""

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from modeling_miniminds import get_config
from modeling_miniminds.cli import did_you_mean
from recipes.training.eval_lm import EvalConfig
from recipes.training.pipeline_stages import CONFIGS, STAGE_MODULES

TRAINING_STAGES = tuple(STAGE_MODULES)
# DPO before the reward model, which starts from it (see `pipeline_stages.post_training_paths`).
POST_TRAINING = ("sft", "dpo", "reward", "ppo", "grpo", "agent")
# The demo's SFT data holds calculator chats (SFT reports the held-out calls); tool_grpo then trains on the calculator
# questions with the tool offered.
DEMO_STAGES = ("corpus", "tokenizer", "pretrain", "model", "distill", *POST_TRAINING, "tool_grpo", "eval")
GPU_STAGES = ("corpus", "tokenizer", "pretrain", "model", *POST_TRAINING, "eval")
WITH_DISTILL = ("corpus", "tokenizer", "pretrain", "model", "distill", *POST_TRAINING, "eval")
# Seconds each stage took in `make demo` on this project's 2-core CPU machine on a slow day (pretraining, SFT, the
# reward model and PPO scaled by what their changed runs cost); the ETA scales what is left by how fast this run has
# gone so far, so a faster machine sees a shorter one.
EXPECTED_SECONDS = {
    "corpus": 5.5,
    "tokenizer": 4.4,
    "pretrain": 444,
    "model": 9.0,
    "distill": 43,
    "sft": 231,
    "reward": 77,
    "dpo": 58,
    "ppo": 95,
    "grpo": 47,
    "tool_grpo": 95,
    "eval": 42,
}


@dataclass(frozen=True)
class Profile:
    """A named set of stage recipes. GPU profiles train their tokenizer on at most `tokenizer_docs` documents of
    each file and score GRPO's replies with the trained reward model too (`grpo_reward_model`: upstream's RL
    prompts carry no answer to check); `expected_seconds` (the demo's) replaces the warm-up's ETA in the banners.
    `optional` stages run only when `--stages` names them (and in the dry run, which runs every stage)."""

    name: str
    stages: tuple[str, ...]
    recipes: dict[str, str]
    optional: tuple[str, ...] = ()
    vocab_size: int = 6400
    tokenizer_docs: int | None = 200_000
    grpo_reward_model: bool = True
    expected_seconds: dict[str, float] | None = None


def gpu_recipes(pretrain: str, post_training: str, distill: str | None = None) -> dict[str, str]:
    recipes = {"pretrain": f"pretrain_{pretrain}.yaml"} | {
        stage: f"{stage}_{post_training}.yaml" for stage in POST_TRAINING
    }
    return recipes | ({"distill": distill} if distill else {})


PROFILES = {
    "demo": Profile(
        "demo",
        DEMO_STAGES,
        {stage: f"{stage}_tiny.yaml" for stage in TRAINING_STAGES},
        vocab_size=2048,
        tokenizer_docs=None,
        # The tiny model cannot learn the agent tools' prompts in the demo's minutes; tool_grpo's 90 s would take a
        # slow day's demo past 15 minutes, and its tool-accuracy gain on dev (0.02 -> 0.08, n=200) did not repeat on
        # eval (0.085 -> 0.08): copying the question's expression into the call limits it. Both run only when named.
        optional=("agent", "tool_grpo"),
        grpo_reward_model=False,
        expected_seconds=EXPECTED_SECONDS,
    ),
    "minimind-26m": Profile("minimind-26m", GPU_STAGES, gpu_recipes("26m", "26m")),
    "minimind-64m": Profile(
        "minimind-64m", WITH_DISTILL, gpu_recipes("64m", "64m", "distill_64m.yaml"), optional=("distill",)
    ),
    # ~65M parameters active per token (one routed expert of four, the shared one, attention, embeddings), about the
    # 64M model's compute, so its post-training recipes fit.
    "minimind-moe": Profile(
        "minimind-moe", WITH_DISTILL, gpu_recipes("moe", "64m", "distill_64m.yaml"), optional=("distill",)
    ),
}

# --dry_run: every stage a few steps on the built-in tiny corpus on CPU, whatever the profile's sizes; a flag is
# applied to the stages that have it.
DRY_RUN_FLAGS = {
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "block_size": 64,
    "max_length": 256,
    "max_prompt_length": 256,
    "max_completion_length": 8,
    "num_generations": 2,
    "rollout_batch_size": 2,
    "num_ppo_epochs": 1,
    "chat_eval_samples": 4,
    "chat_eval_max_new_tokens": 8,
    "tool_eval_samples": 2,
    "tool_eval_max_new_tokens": 8,
    "max_eval_pairs": 8,
    "logging_steps": 1,
    "save_steps": 1,
    "num_proc": 1,
    "dataset_num_proc": 1,
    "dataloader_num_workers": 0,
    "use_cpu": "true",
    "bf16": "false",
}
# The shape a dry run shrinks a profile's model to, keeping its kind (dense or experts).
DRY_RUN_MODEL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    moe_intermediate_size=64,
    max_position_embeddings=2048,
)
DRY_RUN_EVAL = EvalConfig(max_docs=8, max_new_tokens=8)
RUNNER_FLAGS = ("output_dir",)


def parse_override(text: str) -> tuple[str, str, list[str]]:
    """`stage.flag=value` as (stage, flag, values); the value splits like a shell word list, so a list flag takes
    `grpo.reward_funcs='format accuracy'`."""
    target, eq, value = text.partition("=")
    stage, dot, flag = target.partition(".")
    if not (eq and dot and stage and flag):
        raise ValueError(f"--set {text}: expected STAGE.FLAG=VALUE, e.g. --set sft.learning_rate=2e-4")
    return stage, flag.replace("-", "_"), shlex.split(value) or [""]


def stage_overrides(texts: list[str], stages) -> dict[str, dict]:
    """Each `--set` checked against the stage's own flags before anything runs: an unknown stage or flag is a
    one-line error naming the nearest valid one."""
    overrides = {}
    for text in texts:
        stage, flag, values = parse_override(text)
        if stage not in stages or stage not in STAGE_MODULES:
            settable = [name for name in stages if name in STAGE_MODULES]
            raise ValueError(
                f"--set {text}: no training stage {stage!r} in this profile{did_you_mean(stage, settable)} "
                f"(--set applies to {', '.join(settable)})"
            )
        if flag in RUNNER_FLAGS:
            raise ValueError(f"--set {text}: {flag} is set by the runner (--output_dir sets where every stage writes)")
        valid = STAGE_MODULES[stage].make_parser().valid_flags
        if flag not in valid:
            raise ValueError(f"--set {text}: {flag} is not a flag of {stage}{did_you_mean(flag, valid)}")
        overrides.setdefault(stage, {})[flag] = values if len(values) > 1 else values[0]
    return overrides


def dry_run_flags(profile: Profile, out: Path, processes: int) -> dict[str, dict]:
    """Per training stage, the caps of `DRY_RUN_FLAGS` it has, one micro-batch per process and step, and, where
    it builds a model, the profile's model shrunk (written to `<out>/dry_run_<preset>.json`)."""
    flags = {}
    global_batch = {"global_batch_size": DRY_RUN_FLAGS["per_device_train_batch_size"] * processes}
    for stage in profile.stages:
        if stage not in STAGE_MODULES:
            continue
        parser = STAGE_MODULES[stage].make_parser()
        caps = DRY_RUN_FLAGS | global_batch
        flags[stage] = {key: value for key, value in caps.items() if key in parser.valid_flags}
        if "model_config" in parser.valid_flags:
            preset = parser.parse_args_and_config(["--config", str(recipe_path(profile, stage))])[2].model_config
            flags[stage]["model_config"] = shrunk_config(preset, out)
    return flags


def recipe_path(profile: Profile, stage: str) -> Path:
    return CONFIGS / profile.recipes[stage]


def shrunk_config(preset: str, out: Path) -> str:
    """The preset at the dry run's shape, written by a rename: every process of a launch writes it."""
    values = get_config(preset).to_dict() | DRY_RUN_MODEL
    path = out / f"dry_run_{Path(preset).stem}.json"
    staged = out / f".{path.name}.{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    staged.write_text(json.dumps(values, indent=2), encoding="utf-8")
    os.replace(staged, path)
    return str(path)
