"""The run every stage walks: start (distributed setup, resume or overwrite, seed), held-out probes before training,
train, probes after, the results files and the complete model folder, and one result shape.

    resume = start_run(training_args)
    held_out = HeldOutProbes([Probe("chat", measure)], training_args.output_dir)
    trainer = StageTrainer(..., callbacks=[held_out])
    output = trainer.train(resume_from_checkpoint=resume)
    result = finish_run(trainer, output, held_out, logged=LM_EVAL, card=RunCard.of("sft", script_args))

The model folder gets the project's model card as its README.md (`write_card`): the stage, its data and steps, the
held-out numbers, and a quick start that loads the folder through remote code.

Every stage returns `seconds, steps, tokens, tokens_per_second, train_loss, num_parameters, trainable_parameters,
before, after, gains, output_dir`, plus its own named extras, so a report needs no per-stage translation. `before`
and `after` keep each probe's per-question values under `items`; `gains` holds the paired after-minus-before
difference of each (`intervals.paired_gains`).
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import IntervalStrategy, TrainerCallback, set_seed

from modeling_miniminds.export.model_card import CARD, model_card
from recipes.training.args import setup_distributed
from recipes.training.checkpoints import prepare_output_dir, resolve_resume_checkpoint
from recipes.training.intervals import merge_metrics, paired_gains
from recipes.training.lora import merge_adapter
from recipes.training.models import count_parameters, save_final_model

logger = logging.getLogger(__name__)

BEFORE_FILE = "heldout_before.json"


def start_run(training_args) -> str | None:
    """Set up the process group, find the checkpoint to resume from (None: a fresh run), prepare the output folder
    and seed everything. A resumed run skips the start evaluation: its result is in the restored log history.
    Call before building the model."""
    setup_distributed(training_args)
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    prepare_output_dir(
        training_args.output_dir,
        resuming=resume is not None,
        overwrite=training_args.overwrite_output_dir,
        is_main_process=training_args.should_save,
    )
    set_seed(training_args.seed)
    if resume:
        training_args.eval_on_start = False
        logger.info(f"Resuming from {resume}")
    return resume


def turn_off_eval_without_data(training_args, eval_dataset) -> None:
    """No held-out data: no periodic evaluation and no start loss, instead of the Trainer refusing to start."""
    if eval_dataset is None:
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.eval_on_start = False


@dataclass(frozen=True)
class Probe:
    """A held-out measurement: `measure(model)` returns its metrics (numbers; lists or dicts such as `samples` are
    kept in the result but left out of the results files)."""

    name: str
    measure: Callable[..., dict]


@dataclass(frozen=True)
class Logged:
    """A metric the trainer logs: `before` is its value at step 0 (the start evaluation), else `at_start` (a value
    known by definition, such as the KL of a policy that starts as its reference); `after` is its last value."""

    key: str
    name: str
    at_start: float | None = None
    digits: int | None = None

    def rounded(self, value: float | None) -> float | None:
        return value if value is None or self.digits is None else round(value, self.digits)


# The held-out numbers of a language-model loss, measured by the trainer's own evaluation.
LM_EVAL = (Logged("eval_loss", "eval_loss"), Logged("eval_perplexity", "perplexity"))


class HeldOutProbes(TrainerCallback):
    """Runs the probes on the model as training starts (`before`) and as it ends (`after`).

    Every process measures (under ZeRO-3 a forward needs them all); the first writes `before` to the output folder,
    so a resumed run reports the numbers of the model it started from, not of its checkpoint.
    """

    def __init__(self, probes: list[Probe], output_dir: str | Path):
        self.probes, self.path = list(probes), Path(output_dir) / BEFORE_FILE
        self.before = self.after = None

    def measure(self, model) -> dict:
        return merge_metrics(*(probe.measure(model) for probe in self.probes))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 or not self.path.exists():
            self.before = self.measure(model)
            if state.is_world_process_zero:
                self.path.write_text(json.dumps(self.before, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            self.before = json.loads(self.path.read_text(encoding="utf-8"))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = self.measure(model)


def logged_metrics(history: list[dict], logged) -> tuple[dict, dict]:
    """`before` and `after` of each `Logged` metric found in the log history."""
    before, after = {}, {}
    for metric in logged:
        values = [h for h in history if h.get(metric.key) is not None]
        if not values:
            continue
        start = next((h[metric.key] for h in values if h["step"] == 0), metric.at_start)
        before[metric.name], after[metric.name] = metric.rounded(start), metric.rounded(values[-1][metric.key])
    return before, after


def evaluate_last_step(trainer) -> dict:
    """The eval metrics of the final model: those of the last step when it just evaluated, else a new evaluation."""
    if trainer.eval_dataset is None:
        return {}
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if evals and evals[-1]["step"] == trainer.state.global_step:
        return {k: v for k, v in evals[-1].items() if k.startswith("eval_")}
    return trainer.evaluate()


def numbers(metrics: dict) -> dict:
    """The metrics a results file holds: numbers, not samples, tables or values a probe could not measure."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


@dataclass(frozen=True)
class RunCard:
    """What a run's model card says beyond the folder's own files: the stage, the data it trained on and held out."""

    stage: str
    data: str | None = None
    eval_data: str | None = None

    @classmethod
    def of(cls, stage: str, script_args) -> "RunCard":
        """The card of a stage's arguments: its --dataset_name, or the sources and weights of its --dataset_mixture."""
        mixture = getattr(script_args, "dataset_mixture", None)
        data = script_args.dataset_name
        if mixture:
            data = ", ".join(f"{source.path} (weight {source.weight:g})" for source in mixture)
        return cls(stage, data, script_args.eval_dataset_name)

    def describe_data(self) -> str:
        held_out = f"; held-out data: `{self.eval_data}`" if self.eval_data else ""
        return f"Trained on `{self.data}`{held_out}."


def write_card(folder: str | Path, card: RunCard, base_model: str | None = None) -> None:
    """The project's model card as the folder's README.md, in place of TRL's draft (`model="None"`, loaded without
    remote code, so its quick start failed)."""
    written = model_card(folder, str(folder), data=card.describe_data(), stage=card.stage, base_model=base_model)
    written.save(Path(folder) / CARD)


def save_run(
    trainer,
    tokenizer,
    train_output,
    card: RunCard,
    extra_eval: dict | None = None,
    eval_metrics: dict | None = None,
):
    """Write `train_results.json`, `eval_results.json` (`eval_metrics` plus `extra_eval` as `eval_<name>`) and
    `all_results.json`, save the trainer state, the final model and its card. Returns the eval metrics."""
    trainer.log_metrics("train", train_output.metrics)
    trainer.save_metrics("train", train_output.metrics)
    eval_metrics = dict(eval_metrics or {})
    for key, value in (extra_eval or {}).items():
        eval_metrics.setdefault(key if key.startswith("eval_") else f"eval_{key}", value)
    if eval_metrics:
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    trainer.save_state()
    save_final_model(trainer, tokenizer)
    if trainer.args.should_save:
        base_model = getattr(trainer.accelerator.unwrap_model(trainer.model).config, "_name_or_path", None)
        write_card(trainer.args.output_dir, card, base_model or None)
    return eval_metrics


def finish_run(
    trainer,
    train_output,
    held_out: HeldOutProbes | None = None,
    logged=(),
    merge_lora: bool = False,
    *,
    card: RunCard,
):
    """After `train()`: stop here if a signal ended it, evaluate the final model, gather `before`/`after` (logged
    metrics, then the probes), fold a LoRA adapter into the weights when `merge_lora`, write the results files and
    the model folder with its `card`. Returns the result every stage shares."""
    trainer.raise_if_interrupted()
    eval_metrics = evaluate_last_step(trainer)
    before, after = logged_metrics(trainer.state.log_history, logged)
    if held_out is not None:
        before, after = merge_metrics(before, held_out.before or {}), merge_metrics(after, held_out.after or {})
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = {
        "seconds": train_output.metrics.get("train_runtime"),
        "steps": trainer.state.global_step,
        "tokens": trainer.trained_tokens(),
        "tokens_per_second": round(trainer.training_tokens_per_second(), 1),
        "train_loss": last_train_loss(trainer.state.log_history, train_output),
        "num_parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "before": before,
        "after": after,
        "gains": paired_gains(before, after),
        "output_dir": trainer.args.output_dir,
    }
    if merge_lora:
        merge_adapter(trainer)
    save_run(trainer, trainer.processing_class, train_output, card, numbers(after), eval_metrics)
    return result


def last_train_loss(history: list[dict], train_output) -> float | None:
    """The last logged training loss, the run's mean when no step was logged."""
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else train_output.metrics.get("train_loss")
