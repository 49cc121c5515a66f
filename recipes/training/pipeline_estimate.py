"""The plan's inputs, measured: each training file's first records through the tokenizer (tokens per byte, per
record), each stage's parsed recipe (batch, steps, checkpoints), the model's parameters, and its step timed on the
device (`warmup`). `pipeline_plan` does the arithmetic.
"""

import copy
import json
import tempfile
from pathlib import Path

import torch

from data_process.records import record_text
from modeling_miniminds import MiniMindForCausalLM, get_config
from modeling_miniminds.tokenizer import load_tokenizer, train_tokenizer
from recipes.training.args import accumulation_steps
from recipes.training.pipeline_plan import (
    StagePlan,
    TokenSample,
    disk_bytes,
    estimate_records,
    estimate_tokens,
    mfu,
    planned_steps,
    step_seconds,
)
from recipes.training.pipeline_stages import STAGE_MODULES, post_training_paths, recipe_args, recipe_kind
from recipes.training.warmup import PassTimer, stage_passes

SAMPLE_RECORDS = 1000
# Stages whose examples are packed rows of `block_size` / `max_length` tokens; the others count records.
PACKED = {"pretrain": "block_size", "distill": "block_size", "sft": "max_length"}


def string_leaves(value) -> list[str]:
    """Every string in a record whose layout no project format knows, so its tokens can still be counted."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [text for item in items for text in string_leaves(item)]


def sample_records(path: str | Path, limit: int = SAMPLE_RECORDS) -> tuple[list[str], int]:
    """The text of a file's first records (any project format; other layouts by their strings) and their bytes."""
    texts, size = [], 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                texts.append(record_text(record))
            except (KeyError, TypeError, ValueError):
                texts.append("\n".join(string_leaves(record)))
            size += len(line)
            if len(texts) >= limit:
                break
    return texts, size


def token_sample(path: str | Path, tokenizer) -> TokenSample:
    texts, size = sample_records(path)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    return TokenSample(records=len(texts), bytes=size, tokens=tokens, chars=sum(map(len, texts)))


def plan_tokenizer(run, done: dict, folder: Path):
    """The tokenizer the run will use, or, before it is trained, one trained on the pretraining file's sample at the
    run's vocabulary size (its tokens per byte are close to the full one's)."""
    source = done.get("tokenizer") or run.tokenizer
    if source:
        return load_tokenizer(source)
    files = done["corpus"]["files"]
    texts, _ = sample_records(files.get("pretrain") or next(iter(files.values())))
    return train_tokenizer(iter(texts), folder, vocab_size=run.vocab_size)


def parameters(config, active: bool = False) -> int:
    """The model's parameters; `active`: those a token passes through, all but the routed experts it skips (top-k
    of n), which is what its FLOPs count."""
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    if not (active and config.use_moe):
        return total
    experts = sum(p.numel() for name, p in model.named_parameters() if ".mlp.experts." in name)
    return round(total - experts * (1 - config.num_experts_per_tok / config.num_experts))


def future_artifacts(run, done: dict) -> dict:
    """`done` with the model folders the stages will write, so each stage's recipe parses before any ran."""
    folders = {stage: str(run.out / stage) for stage in ("tokenizer", "pretrain", "sft", "reward")}
    return folders | done


def parsed_args(run, stage: str, done: dict, nproc: int) -> tuple:
    """The stage's arguments as it will run them, with the accumulation `nproc` processes get."""
    if stage == "pretrain":
        paths = {"dataset_name": done["corpus"]["files"]["pretrain"], "tokenizer_name_or_path": done["tokenizer"]}
    elif stage == "distill":
        paths = {"dataset_name": done["corpus"]["files"]["distill"], "teacher_name_or_path": done["pretrain"]}
    else:
        paths = post_training_paths(run, stage, done)
    script_args, args, model_args = recipe_args(run, stage, run.out / stage, **paths)
    if nproc > 1 and args.global_batch_size:
        args = copy.copy(args)
        args.gradient_accumulation_steps = accumulation_steps(
            args.global_batch_size, args.per_device_train_batch_size, nproc
        )
    return script_args, args, model_args


def examples_per_epoch(kind: str, args, script_args, data_tokens: int, records: int) -> int:
    """What a stage's batch counts (by the recipe it runs, `kind`): packed rows, pairs, prompts' completions (GRPO)
    or rollouts' prompts (PPO)."""
    if kind in PACKED:
        source = script_args if kind != "sft" else args
        return -(-data_tokens // getattr(source, PACKED[kind]))
    if kind == "grpo":
        return records * args.num_generations
    return records


def global_batch(kind: str, args, nproc: int) -> int:
    if kind == "ppo":
        return args.rollout_batch_size * nproc
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * nproc


def stage_plan(run, stage: str, done: dict, timer: PassTimer, tokenizer, configs: dict, device: dict) -> StagePlan:
    """One training stage's row: its file's tokens, its steps and the tokens they read, its disk, its timed step,
    and for a packed stage the MFU that step implies. `configs` holds the policy's shape (distillation adds its
    student's); `device` its `peak` TFLOPS and the `processes` per stage."""
    nproc = device["processes"]
    path = done["corpus"]["files"][stage]
    sample = token_sample(path, tokenizer)
    file_bytes = Path(path).stat().st_size
    data_tokens, records = estimate_tokens(file_bytes, sample), estimate_records(file_bytes, sample)
    script_args, args, model_args = parsed_args(run, stage, done, nproc)
    kind = recipe_kind(stage)
    examples = examples_per_epoch(kind, args, script_args, data_tokens, records)
    batch = global_batch(kind, args, nproc)
    steps = planned_steps(args.max_steps, args.num_train_epochs, examples, batch)
    if stage == "distill":
        configs = configs | {"student": get_config(model_args.model_config, vocab_size=len(tokenizer))}
    per_step = step_seconds(
        (step.count, timer.seconds(configs[step.model], step))
        for step in stage_passes(kind, args, script_args, sample.tokens_per_record)
    )
    trained = configs["student" if stage == "distill" else "policy"]
    tokens = round(steps * batch * data_tokens / max(examples, 1))
    tokens_per_second = tokens / (steps * per_step) if kind in PACKED and per_step else 0
    return StagePlan(
        stage=stage,
        file=Path(path),
        file_bytes=file_bytes,
        data_tokens=data_tokens,
        steps=steps,
        tokens=tokens,
        disk=disk_bytes(parameters(trained), args.save_total_limit, 2 if stage == "ppo" else 1, data_tokens),
        seconds=steps * per_step,
        step_seconds=per_step,
        mfu=mfu(parameters(trained, active=True), tokens_per_second, device["peak"], nproc),
        note=f"{sample.chars_per_token:.2f} chars/token on {sample.records} records",
    )


def policy_config(run, done: dict, vocab_size: int):
    """The policy's shape: the pretraining recipe's model at the tokenizer's vocabulary."""
    model_args = parsed_args(run, "pretrain", done, 1)[2]
    return get_config(model_args.model_config, vocab_size=vocab_size)


def build_plan(run, chosen, done: dict, device: str, nproc: int, peak: float | None) -> list[StagePlan]:
    """A row per chosen stage, timed where it trains."""
    timer = PassTimer(device if device == "cpu" else "cuda")
    shape = {"peak": peak, "processes": nproc}
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = plan_tokenizer(run, done, Path(folder))
        done = future_artifacts(run, done)
        configs = {"policy": policy_config(run, done, len(tokenizer))}
        plans = []
        for stage in chosen:
            if stage in STAGE_MODULES:
                plans.append(stage_plan(run, stage, done, timer, tokenizer, configs, shape))
            else:
                plans.append(StagePlan(stage=stage))
    return plans
