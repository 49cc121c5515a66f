"""Pieces shared by every MiniMinds training recipe (pretrain, SFT, DPO, PPO, GRPO).

A recipe puts `MiniMindsTrainerMixin` in front of its trainer class (`class PretrainTrainer(MiniMindsTrainerMixin,
Trainer)`), calls `prepare_output_dir` and `resolve_resume_checkpoint` before training and `save_final_model` after.
The mixin brings atomic checkpoints, weight decay on >=2-D weights only, a correctly weighted and logged MoE aux loss,
eval perplexity, tokens/s in the logs and on the progress bar, and `metrics.jsonl` plus a loss/lr plot.
"""

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

logger = logging.get_logger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"
TRAINER_STATE_FILE = "trainer_state.json"
STAGING_PREFIX = ".tmp-" + PREFIX_CHECKPOINT_DIR + "-"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def resolve_precision(bf16: bool | None, fp16: bool | None, use_cpu: bool = False) -> tuple[bool, bool]:
    """Pick (bf16, fp16) for flags left unset (None): bf16 on GPUs that have it, fp16 with loss scaling on older
    GPUs, fp32 on CPU. Flags given explicitly win."""
    on_gpu = torch.cuda.is_available() and not use_cpu
    if bf16 is None:
        bf16 = bool(on_gpu and torch.cuda.is_bf16_supported() and not fp16)
    if fp16 is None:
        fp16 = bool(on_gpu and not bf16)
    return bf16, fp16


def init_distributed(args) -> None:
    """Set up the process group before the model is built, DeepSpeed's communicator included.

    ZeRO-3 shards the model while it is being constructed and reads the world size from DeepSpeed's communicator.
    On GPUs accelerate initialises it; on CPU (`--use_cpu`) it only sets up torch.distributed, so the model would be
    sharded as if each process were alone.
    """
    _ = args.device
    if args.deepspeed and args.world_size > 1:
        import deepspeed

        if not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


def count_parameters(model) -> int:
    """Parameter count that stays right under ZeRO-3, where each process holds only a shard of every tensor."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


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


def check_vocab_fits(tokenizer: PreTrainedTokenizerBase, vocab_size: int, model_name: str) -> None:
    """Fail before training when the tokenizer can emit ids the model's embedding table does not have."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model {model_name} has vocab_size={vocab_size}: "
            "token ids past the embedding table would crash training. Use the tokenizer the model was trained "
            "with, or resize the model's embeddings first."
        )


def align_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the model config and generation config use the tokenizer's bos/eos/pad ids, so `generate` stops where
    the tokenizer ends a text and pads with its pad token."""
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for config in (model.config, model.generation_config):
        if config is None:
            continue
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = pad_token_id


def save_final_model(trainer, tokenizer: PreTrainedTokenizerBase, output_dir: str | Path | None = None) -> str:
    """Save a complete, self-contained HF model folder: weights (gathered under ZeRO-3), config with `auto_map`,
    the modeling files for `trust_remote_code`, generation config and tokenizer, with `use_cache` restored."""
    output_dir = str(output_dir or trainer.args.output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    align_special_tokens(model, tokenizer)
    model.config.use_cache = True
    trainer.save_model(output_dir)
    if trainer.args.should_save:
        tokenizer.save_pretrained(output_dir)
        check_model_folder(output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def check_model_folder(folder: str | Path) -> None:
    """Fail loudly if a saved model folder lacks a file that loading it needs, remote-code modules included."""
    folder = Path(folder)
    needed = ["config.json", "generation_config.json"]
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    local_refs = [ref for ref in config.get("auto_map", {}).values() if isinstance(ref, str) and "--" not in ref]
    needed += sorted({ref.split(".")[0] + ".py" for ref in local_refs})
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise RuntimeError(f"The saved model in {folder} is incomplete: {', '.join(missing)} missing.")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a `metrics.jsonl` file, oldest first."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_metrics(records: list[dict], png_path: str | Path) -> None:
    """Loss (train and eval) and learning rate against the optimizer step, as one PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="tight")
    loss_ax, lr_ax = fig.subplots(1, 2)
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            loss_ax.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    loss_ax.legend()
    lr_points = [(r["step"], r["learning_rate"]) for r in records if "learning_rate" in r]
    if lr_points:
        lr_ax.plot(*zip(*lr_points))
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    fig.savefig(png_path, dpi=100)


class MetricsCallback(TrainerCallback):
    """Append every log to `output_dir/metrics.jsonl` and redraw the loss/lr plot at each save and at the end.

    Works with or without `--report_to`. A fresh run starts a new file; on resume, records past the checkpoint's step
    are dropped, so the file matches the training that actually continued.
    """

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / METRICS_FILE
        self.png = Path(output_dir) / PLOT_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            resumed = state.global_step > 0
            kept = [r for r in read_metrics(self.path) if resumed and r.get("step", 0) <= state.global_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "time": round(time.time(), 3), **logs}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_metrics(read_metrics(self.path), self.png)

    def on_train_end(self, args, state, control, **kwargs):
        self.on_save(args, state, control)


class ThroughputCallback(TrainerCallback):
    """Training tokens per second, not counting time spent evaluating or saving checkpoints.

    Eval and save run after `on_step_end` and end with `on_evaluate` / `on_save`, so the time from the last step end
    (or the last of those events) to such an event is what gets excluded.
    """

    def __init__(self):
        self.start = self.mark = self.window_start = time.perf_counter()
        self.start_tokens = self.window_tokens = 0
        self.excluded = self.window_excluded = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.mark = self.window_start = time.perf_counter()
        self.start_tokens = self.window_tokens = state.num_input_tokens_seen
        self.excluded = self.window_excluded = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.mark = time.perf_counter()

    def _exclude(self):
        now = time.perf_counter()
        self.excluded += now - self.mark
        self.mark = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._exclude()

    def on_save(self, args, state, control, **kwargs):
        self._exclude()

    def rate(self, num_tokens: int) -> float:
        """Tokens/s since training (re)started."""
        seconds = time.perf_counter() - self.start - self.excluded
        return (num_tokens - self.start_tokens) / seconds if seconds > 0 else 0.0

    def window_rate(self, num_tokens: int) -> float:
        """Tokens/s since the previous call: what a log line reports."""
        now = time.perf_counter()
        seconds = now - self.window_start - (self.excluded - self.window_excluded)
        rate = (num_tokens - self.window_tokens) / seconds if seconds > 0 else 0.0
        self.window_start, self.window_tokens, self.window_excluded = now, num_tokens, self.excluded
        return rate


class TokenProgressCallback(ProgressCallback):
    """The Trainer's progress bar (steps, ETA) with training tokens/s as its postfix."""

    def __init__(self, throughput: ThroughputCallback):
        super().__init__()
        self.throughput = throughput

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if state.is_world_process_zero and self.training_bar is not None and state.num_input_tokens_seen:
            tokens_per_second = self.throughput.rate(state.num_input_tokens_seen)
            self.training_bar.set_postfix_str(f"{tokens_per_second:,.0f} tok/s", refresh=False)


class MiniMindsTrainerMixin:
    """Put in front of a transformers/TRL trainer class. See the module docstring for what it adds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.throughput = ThroughputCallback()
        self.add_callback(self.throughput)
        self.add_callback(MetricsCallback(self.args.output_dir))
        if not self.args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(TokenProgressCallback(self.throughput))
        self._aux_loss_sum = None
        self._aux_loss_count = 0
        self._staging_root = None

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on matrices (>=2-D) only: never on norms, biases or other vectors, whatever their names."""
        return [name for name, param in model.named_parameters() if param.ndim >= 2]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Fill warmup-stable-decay's decay length from `decay_ratio` when not given in `lr_scheduler_kwargs`."""
        kwargs = dict(self.args.lr_scheduler_kwargs or {})
        decay_ratio = getattr(self.args, "decay_ratio", None)
        if self.args.lr_scheduler_type == "warmup_stable_decay" and decay_ratio is not None:
            kwargs.setdefault("num_decay_steps", max(1, round(decay_ratio * num_training_steps)))
        self.args.lr_scheduler_kwargs = kwargs
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Log the MoE aux loss and give it the right weight.

        The model returns `loss = lm_loss + coef * aux_loss`. When the Trainer normalises the LM loss by the token
        count of the whole accumulated batch, it no longer divides by the accumulation steps, so the aux term would
        count `gradient_accumulation_steps` times over; it is rescaled here. Evaluation reports the LM loss alone,
        so eval perplexity means perplexity.
        """
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        aux_loss = outputs.get("aux_loss") if isinstance(outputs, dict) else None
        if aux_loss is not None:
            loss = self._reweight_aux_loss(model, loss, aux_loss, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _reweight_aux_loss(self, model, loss, aux_loss, num_items_in_batch):
        coef = self.accelerator.unwrap_model(model).config.router_aux_loss_coef
        loss_is_token_normalised = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        scale = 1
        if loss_is_token_normalised and self.args.average_tokens_across_devices:
            scale = self.accelerator.num_processes // self.get_tp_size()
        aux_term = coef * aux_loss.to(loss.device) * scale
        if not model.training:
            return loss - aux_term
        detached = aux_loss.detach().float()
        self._aux_loss_sum = detached if self._aux_loss_sum is None else self._aux_loss_sum + detached
        self._aux_loss_count += 1
        if loss_is_token_normalised:
            loss = loss - aux_term + aux_term / self.current_gradient_accumulation_steps
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `aux_loss` and `tokens_per_second` to training logs and `eval_perplexity` to eval logs."""
        if "loss" in logs:
            if self._aux_loss_count:
                mean_aux = self.accelerator.reduce(self._aux_loss_sum / self._aux_loss_count, reduction="mean")
                logs["aux_loss"] = round(mean_aux.item(), 6)
                self._aux_loss_sum, self._aux_loss_count = None, 0
            if self.state.num_input_tokens_seen:
                logs["tokens_per_second"] = round(self.throughput.window_rate(self.state.num_input_tokens_seen), 1)
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        super().log(logs, start_time)

    def training_tokens_per_second(self) -> float:
        """Tokens/s of the last `train()` call, excluding evaluation and checkpoint time."""
        return self.throughput.rate(self.state.num_input_tokens_seen)

    def _get_output_dir(self, trial):
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint into a hidden staging folder, then rename it to `checkpoint-N` once every rank has
        finished: a kill at any point leaves either no `checkpoint-N` or a complete one, and the previous
        checkpoint untouched."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = run_dir / f"{STAGING_PREFIX}{self.state.global_step}"
        if self.args.should_save and staging_root.exists():
            shutil.rmtree(staging_root)
        self.accelerator.wait_for_everyone()
        self._staging_root = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_checkpoint(staging_root / name, run_dir / name)
            shutil.rmtree(staging_root, ignore_errors=True)
            best = self.state.best_model_checkpoint
            if best is not None and best.startswith(str(staging_root)):
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()
