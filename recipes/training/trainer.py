"""The mixin every MiniMinds trainer puts in front of its transformers or TRL trainer class.

    class SFTStageTrainer(MiniMindsTrainerMixin, SFTTrainer): ...

It works unchanged under Trainer, SFTTrainer, RewardTrainer, DPOTrainer and GRPOTrainer: it leaves `compute_loss`
to the trainer (TRL adds the MoE load-balancing loss itself) and adds atomic checkpoints, weight decay on >=2-D
weights only, the min-lr schedules, tokens/s in the logs and on the progress bar, eval perplexity for language-model
losses, `metrics.jsonl` plus a plot of its curves, and a Ctrl-C that saves a checkpoint before stopping. It writes no
TRL draft model card: the run writes the project's with the final model.
"""

import math
import shutil
from pathlib import Path

import trl
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from recipes.training.callbacks import InterruptCallback, MetricsCallback, ThroughputCallback, TokenProgressCallback
from recipes.training.checkpoints import STAGING_PREFIX, publish_checkpoint


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM after saving `checkpoint`."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class MiniMindsTrainerMixin:
    """Put in front of a transformers/TRL trainer class. See the module docstring for what it adds.

    `reports_perplexity` is True for trainers whose eval loss is a token-level LM loss (pretraining, SFT).
    """

    reports_perplexity = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.throughput = ThroughputCallback()
        self.interrupt = InterruptCallback()
        self.add_callback(self.throughput)
        self.add_callback(self.interrupt)
        self.add_callback(MetricsCallback(self.args.output_dir))
        if not self.args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(TokenProgressCallback(self.throughput))
        self._staging_root = None

    def create_model_card(self, *args, **kwargs) -> None:
        """Nothing at checkpoints: TRL's draft names `model="None"` and loads without remote code, so its quick start
        failed. The run writes the project's card with the final model (`lifecycle.write_card`)."""

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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `tokens_per_second` to training logs and `eval_perplexity` to LM eval logs."""
        if "loss" in logs and self.state.num_input_tokens_seen:
            logs["tokens_per_second"] = round(self.throughput.window_rate(self.state.num_input_tokens_seen), 1)
        if self.reports_perplexity and "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        super().log(logs, start_time)

    def raise_if_interrupted(self) -> None:
        """After `train()`: raise `TrainingInterrupted` when a signal ended it early (its checkpoint is saved)."""
        step = self.interrupt.stopped_at_step
        if step is not None:
            raise TrainingInterrupted(step, str(Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"))

    def trained_tokens(self) -> int:
        """Training tokens seen so far (a trainer that counts its own, like GRPO's, overrides this)."""
        return self.state.num_input_tokens_seen

    def training_tokens_per_second(self) -> float:
        """Tokens/s of the last `train()` call, excluding evaluation and checkpoint time."""
        return self.throughput.rate(self.trained_tokens())

    def _get_output_dir(self, trial):
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Private Trainer hook, overridden because no public one wraps the whole write (tests pin it: a kill during
        the write, the folder layout, rotation).

        Write the checkpoint into a hidden staging folder, then rename it to `checkpoint-N` once every rank has
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


class SFTStageTrainer(MiniMindsTrainerMixin, trl.SFTTrainer):
    reports_perplexity = True


class RewardStageTrainer(MiniMindsTrainerMixin, trl.RewardTrainer):
    pass


class DPOStageTrainer(MiniMindsTrainerMixin, trl.DPOTrainer):
    pass


class GRPOStageTrainer(MiniMindsTrainerMixin, trl.GRPOTrainer):
    pass
