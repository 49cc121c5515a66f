"""Direct preference optimisation: the arguments, the guards and `dpo()`, which `recipes/dpo.py` and the demo call.

The policy starts from an SFT folder and the reference is the same folder, frozen: TRL reloads it from the policy's
`config._name_or_path`, or, with `--use_peft`, uses the policy with its adapter disabled (`--precompute_ref_log_probs`
scores the reference once up front instead). Guards against what upstream MiniMind users met: a NaN loss stops the
run naming the step and batch; a loss stuck at log 2 = 0.693 (the value while chosen and rejected look the same to
policy and reference) is reported with its likely cause; bad pairs fail at their `file:line` before any model loads.
"""

import logging
import math
from dataclasses import dataclass, field

from transformers import TrainerCallback

from recipes.training.args import DPOStageConfig, ModelArguments
from recipes.training.cli import RecipeParser
from recipes.training.evaluation import ChatEvalArguments, read_chat_probes
from recipes.training.intervals import ITEMS, paired_gains, share_items
from recipes.training.lifecycle import (
    HeldOutProbes,
    Logged,
    Probe,
    RunCard,
    finish_run,
    start_run,
    turn_off_eval_without_data,
)
from recipes.training.lora import lora_config
from recipes.training.models import count_parameters, load_causal_lm, resolve_tokenizer
from recipes.training.preference import PreferenceScriptArguments, load_preference_datasets, warn_if_dropped
from recipes.training.probes import chat_probe
from recipes.training.trainer import DPOStageTrainer

logger = logging.getLogger(__name__)

LOG_2 = math.log(2)
STUCK_TOLERANCE = 1e-3
# Losses that equal log 2 when the policy's preference equals the reference's.
LOG_2_AT_START = ("sigmoid", "sigmoid_norm", "robust")
# TRL's held-out preference numbers under MiniMinds names. Without a start evaluation they are 0 by definition: the
# policy starts as the reference, so every implicit reward is 0.
PREFERENCE_METRICS = (
    Logged("eval_rewards/accuracies", "preference_accuracy", at_start=0.0, digits=4),
    Logged("eval_rewards/margins", "margin", at_start=0.0, digits=4),
)
TASK_METRICS = ("accuracy", "task_accuracy", "eot_rate")
# A held-out task number falling by more than this during DPO is reported: DPO must not quietly wreck the policy.
TASK_DROP_WARNING = 0.1


@dataclass
class DPOScriptArguments(PreferenceScriptArguments, ChatEvalArguments):
    """Data options of the DPO stage."""


@dataclass
class DPOModelArguments(ModelArguments):
    """The SFT folder DPO starts from, which is also the frozen reference."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "SFT model folder (or Hub id): the policy and, frozen, the reference."}
    )


@dataclass
class DPOTrainingConfig(DPOStageConfig):
    """TRL's DPOConfig with DPO defaults; every TrainingArguments and DPOConfig flag stays available."""

    output_dir: str | None = field(default="runs/dpo", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(
        default=1e-6, metadata={"help": "Peak learning rate; DPO wants a small one (a large one wrecks the policy)."}
    )
    beta: float = field(
        default=0.1, metadata={"help": "How far the policy may move from the reference: higher keeps it closer."}
    )
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={
            "help": "sigmoid (DPO), ipo, hinge, robust, sigmoid_norm, sft, ...: TRL's DPO losses; several add up."
        },
    )
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "Score the reference once up front instead of keeping it in memory."}
    )
    max_length: int | None = field(
        default=1024, metadata={"help": "Prompt plus reply tokens; longer sequences are cut (keep_start)."}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Pairs per device per micro-batch."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Pairs per device per eval batch."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "no, steps or epoch."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N optimizer steps."})
    eval_on_start: bool = field(
        default=True, metadata={"help": "Evaluate before the first step: the `before` preference numbers."}
    )
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    stuck_loss_steps: int = field(
        default=50,
        metadata={
            "help": f"Warn when the logged loss stays within {STUCK_TOLERANCE} of log 2 (0.693) for this many "
            "steps: the policy is not moving away from the reference. 0 disables the check."
        },
    )


class NonFiniteLossError(ValueError):
    """The DPO loss became NaN or infinite; raised before the step's weights are updated."""


class DPORecipeTrainer(DPOStageTrainer):
    """DPOStageTrainer that stops on a non-finite loss and says where: the optimizer step, the micro-batch within
    it and the batch's first prompt. Every process checks every micro-batch together, so all stop at once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._micro_batch = (None, 0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        output = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = output[0] if return_outputs else output
        self._check_finite(loss.detach(), inputs)
        return output

    def _check_finite(self, loss, inputs) -> None:
        step = self.state.global_step + 1
        if self.model.training:
            last_step, count = self._micro_batch
            self._micro_batch = (step, count + 1 if last_step == step else 1)
        losses = self.accelerator.gather(loss.float().reshape(1)).tolist()
        bad = [rank for rank, value in enumerate(losses) if not math.isfinite(value)]
        if not bad:
            return
        where = f"in evaluation after step {step - 1}"
        if self.model.training:
            where = f"at step {step}, micro-batch {self._micro_batch[1]}"
        rank = self.accelerator.process_index
        raise NonFiniteLossError(
            f"DPO loss is {losses[bad[0]]} {where} (on process {', '.join(map(str, bad))}; process {rank}'s batch "
            f"starts with {self._first_prompt(inputs)!r}); stopped before the weights were updated. Likely causes: a "
            "learning rate too high, fp16 overflow (use bf16 or fp32), or corrupted weights in the starting model."
        )

    def _first_prompt(self, inputs) -> str:
        ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool() & (inputs["completion_mask"][0] == 0)]
        text = self.processing_class.decode(ids, skip_special_tokens=True).strip().replace("\n", " ")
        return text[-120:]


def identical_after_truncation(dataset, max_length: int | None, truncation_mode: str = "keep_start") -> int:
    """Pairs whose chosen and rejected sequences are the same tokens once cut to `max_length` as TRL's collator cuts
    them: they carry no preference and keep the loss at log 2."""
    cut = slice(None, max_length)
    if truncation_mode == "keep_end" and max_length is not None:
        cut = slice(-max_length, None)
    same = 0
    for prompt, chosen, rejected in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]):
        same += (prompt + chosen)[cut] == (prompt + rejected)[cut]
    return same


class StuckLossCallback(TrainerCallback):
    """Warns once when the logged loss stays at log 2 for `steps` steps, naming the likely cause."""

    def __init__(self, steps: int, identical_pairs: int, num_pairs: int):
        self.steps, self.identical_pairs, self.num_pairs = steps, identical_pairs, num_pairs
        self.stuck_since = self.warning = None
        self.last_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        if abs(logs["loss"] - LOG_2) >= STUCK_TOLERANCE:
            self.stuck_since = None
        elif self.stuck_since is None:
            self.stuck_since = self.last_step + 1
        self.last_step = state.global_step
        stuck_for = state.global_step - self.stuck_since + 1 if self.stuck_since is not None else 0
        if self.warning is None and stuck_for >= self.steps:
            self.warning = (
                f"the DPO loss has stayed at log 2 = {LOG_2:.3f} for {stuck_for} steps (steps {self.stuck_since}-"
                f"{state.global_step}): the policy prefers chosen over rejected no more than the reference does. "
                f"Likely cause: {self.likely_cause(args, logs)}"
            )
            if state.is_world_process_zero:
                logger.warning(self.warning)

    def likely_cause(self, args, logs) -> str:
        if args.learning_rate == 0 or logs.get("learning_rate", 1) == 0:
            return "the learning rate is 0, so the policy stays equal to the reference."
        if self.identical_pairs:
            return (
                f"{self.identical_pairs} of {self.num_pairs} training pairs have identical chosen and rejected tokens "
                f"once cut to max_length={args.max_length}; raise --max_length or fix the data."
            )
        return (
            "chosen and rejected replies too alike to tell apart, or a learning rate or beta too small to move the "
            "policy away from the reference within these steps."
        )


def add_preference_items(result: dict, pairs: int) -> None:
    """Per-pair values of the held-out preference accuracy, so it gets an interval and a paired gain like every
    probe. TRL logs only the mean, but the pairs are known: at the start every implicit reward is 0 (no pair is
    preferred), after training round(accuracy * pairs) are. The order of pairs does not change either interval."""
    after = result["after"].get("preference_accuracy")
    if not pairs or after is None:
        return
    result["before"].setdefault(ITEMS, {})["preference_accuracy"] = [0] * pairs
    result["after"].setdefault(ITEMS, {})["preference_accuracy"] = share_items(after, pairs)
    result["gains"] = paired_gains(result["before"], result["after"])


def task_regression(before: dict, after: dict) -> str | None:
    """A warning naming each held-out task number that fell by more than TASK_DROP_WARNING, or None."""
    drops = [
        f"{key} {before[key]} -> {after[key]}"
        for key in TASK_METRICS
        if before.get(key) is not None and after.get(key) is not None and before[key] - after[key] > TASK_DROP_WARNING
    ]
    if not drops:
        return None
    return (
        f"held-out task numbers fell during DPO ({', '.join(drops)}): the policy lost more than it gained. Lower "
        "--learning_rate, raise --beta, or keep the chosen replies likely with --loss_type sigmoid sft."
    )


def build_trainer(script_args, training_args, model_args, callbacks=None, probes=None):
    """The trainer (data checked, policy loaded, guards attached), its held-out probes and the number of bad pairs
    set aside."""
    tokenizer = resolve_tokenizer(model_args)
    train_dataset, eval_dataset, rejected = load_preference_datasets(script_args, training_args)
    turn_off_eval_without_data(training_args, eval_dataset)
    model = load_causal_lm(model_args, tokenizer, training_args.trust_remote_code)
    logger.info(
        f"{count_parameters(model) / 1e6:.2f}M parameters; {len(train_dataset)} training pairs; "
        f"{len(eval_dataset) if eval_dataset is not None else 0} held-out pairs; beta={training_args.beta}, "
        f"loss_type={training_args.loss_type}"
    )
    chat = chat_probe(tokenizer, read_chat_probes(script_args), script_args.chat_eval_max_new_tokens)
    held_out = HeldOutProbes([*chat, *(probes or [])], training_args.output_dir)
    trainer = DPORecipeTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, "CAUSAL_LM"),
        callbacks=[*(callbacks or []), held_out],
    )
    warn_if_dropped("training", len(train_dataset), trainer.train_dataset, training_args.max_length)
    if eval_dataset is not None:
        warn_if_dropped("held-out", len(eval_dataset), trainer.eval_dataset, training_args.max_length)
    identical = identical_after_truncation(
        trainer.train_dataset, training_args.max_length, training_args.truncation_mode
    )
    if identical:
        logger.warning(
            f"{identical} of {len(trainer.train_dataset)} training pairs have identical chosen and rejected tokens "
            f"once cut to max_length={training_args.max_length}: they carry no preference (raise --max_length)."
        )
    if training_args.stuck_loss_steps and set(training_args.loss_type) <= set(LOG_2_AT_START):
        trainer.add_callback(StuckLossCallback(training_args.stuck_loss_steps, identical, len(trainer.train_dataset)))
    return trainer, held_out, rejected


def dpo(
    script_args: DPOScriptArguments,
    training_args: DPOTrainingConfig,
    model_args: DPOModelArguments,
    callbacks: list | None = None,
    probes: list[Probe] | None = None,
) -> dict:
    """Train the policy with DPO and save a complete folder; return the run's result (see `lifecycle`) with
    held-out preference accuracy and margin, and task accuracy, before and after."""
    resume = start_run(training_args)
    trainer, held_out, rejected = build_trainer(script_args, training_args, model_args, callbacks, probes)
    train_output = trainer.train(resume_from_checkpoint=resume)
    result = finish_run(
        trainer, train_output, held_out, PREFERENCE_METRICS, merge_lora=True, card=RunCard.of("dpo", script_args)
    )
    add_preference_items(result, len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0)
    stuck = next((c for c in trainer.callback_handler.callbacks if isinstance(c, StuckLossCallback)), None)
    regression = task_regression(result["before"], result["after"])
    if regression:
        logger.warning(regression)
    result.update(
        train_pairs=len(trainer.train_dataset),
        eval_pairs=len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        rejected=rejected,
        stuck_loss_warning=stuck.warning if stuck else None,
        task_regression_warning=regression,
    )
    logger.info(f"Saved the DPO model to {training_args.output_dir}: {result}")
    trainer.end()
    return result


def make_parser(description: str | None = None) -> RecipeParser:
    """The stage's command line: its script and the demo parse through this one parser."""
    return RecipeParser((DPOScriptArguments, DPOTrainingConfig, DPOModelArguments), description=description)
