"""Checkpoint folders: which ones are complete, which to resume from, and publishing one atomically."""

import os
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"
STAGING_PREFIX = ".tmp-" + PREFIX_CHECKPOINT_DIR + "-"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a `checkpoint-N` folder name, None for any other name."""
    prefix, _, step = Path(path).name.rpartition("-")
    return int(step) if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() else None


def is_complete_checkpoint(path: str | Path) -> bool:
    """A checkpoint counts once it holds weights and the trainer state, which the Trainer writes last."""
    path = Path(path)
    has_weights = any((path / name).exists() for name in WEIGHT_FILES) or any(path.glob("global_step*"))
    return path.is_dir() and (path / TRAINER_STATE_FILE).is_file() and has_weights


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The complete `checkpoint-N` folder with the highest N in `output_dir`, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [(checkpoint_step(p), p) for p in output_dir.iterdir() if checkpoint_step(p) is not None]
    complete = [(step, p) for step, p in found if is_complete_checkpoint(p)]
    for step, path in found:
        if (step, path) not in complete:
            logger.warning(f"Ignoring incomplete checkpoint {path} (no weights or no {TRAINER_STATE_FILE}).")
    return str(max(complete)[1]) if complete else None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> str | None:
    """Turn `--resume_from_checkpoint` into a checkpoint folder or None.

    `auto` resumes from the latest complete checkpoint in `output_dir` when there is one (for preemptible jobs);
    `true`/`latest` require one; any other value is a checkpoint folder, which must be complete.
    """
    if value is None or value is False or str(value).lower() in ("", "false", "no", "none"):
        return None
    keyword = str(value).lower()
    if keyword in ("auto", "true", "latest"):
        found = latest_checkpoint(output_dir)
        if found is None and keyword != "auto":
            raise ValueError(
                f"--resume_from_checkpoint {value}: no complete checkpoint-N folder in {output_dir}. Pass a "
                "checkpoint folder, or `auto` to start from scratch when there is none."
            )
        return found
    if not is_complete_checkpoint(value):
        raise ValueError(
            f"--resume_from_checkpoint {value}: not a complete checkpoint folder (expected weights and "
            f"{TRAINER_STATE_FILE})."
        )
    return str(value)


def prepare_output_dir(
    output_dir: str | Path, resuming: bool, overwrite: bool = False, is_main_process: bool = True
) -> Path:
    """Create `output_dir` and drop staging folders left by a run killed while checkpointing.

    Starting from scratch in a folder that holds checkpoints is refused unless `overwrite` (which deletes them): the
    old checkpoints would outlive the new run's in rotation and a later `--resume_from_checkpoint auto` would pick
    them up.
    """
    output_dir = Path(output_dir)
    old_checkpoints = sorted(p for p in output_dir.glob(PREFIX_CHECKPOINT_DIR + "-*") if checkpoint_step(p) is not None)
    if old_checkpoints and not resuming and not overwrite:
        raise ValueError(
            f"{output_dir} already holds {old_checkpoints[-1].name} and training would start from scratch. Pass "
            "--resume_from_checkpoint auto to continue it, --overwrite_output_dir to delete its checkpoints, or "
            "another --output_dir."
        )
    if is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob(STAGING_PREFIX + "*"):
            logger.warning(f"Removing {stale}: an unfinished checkpoint from an interrupted run.")
            shutil.rmtree(stale, ignore_errors=True)
        if not resuming:
            for old in old_checkpoints:
                shutil.rmtree(old)
    return output_dir


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint into place with one rename, so `final` is either absent or complete.

    A checkpoint already at `final` (a resumed run passing the same step again) is moved aside first and deleted only
    after the new one is in place.
    """
    retired = final.with_name(f"{STAGING_PREFIX}retired-{final.name}")
    if final.exists():
        os.replace(final, retired)
    os.replace(staged, final)
    shutil.rmtree(retired, ignore_errors=True)
