"""Reward modelling on preference pairs: the arguments and `reward()`, which `recipes/reward.py` and the demo call
(the model's loading and scoring are in `reward_model`).

The model is `MiniMindForSequenceClassification` with one output, loaded from an SFT or pretrained folder (its
`score` head starts fresh). It scores a conversation at its last non-pad token, so left- and right-padded batches
score alike, and it is trained with TRL's pairwise loss -log sigmoid(r_chosen - r_rejected). The saved folder is the
reward model the PPO and GRPO stages load, through `trust_remote_code` alone if need be.
"""

import functools
import logging
from dataclasses import dataclass, field

from recipes.training.args import ModelArguments, RewardStageConfig
from recipes.training.cli import RecipeParser
from recipes.training.lifecycle import HeldOutProbes, Probe, RunCard, finish_run, start_run, turn_off_eval_without_data
from recipes.training.lora import lora_config
from recipes.training.models import count_parameters, resolve_tokenizer
from recipes.training.preference import PreferenceScriptArguments, load_preference_datasets, warn_if_dropped
from recipes.training.reward_model import load_reward_model, pairwise_metrics
from recipes.training.trainer import RewardStageTrainer

logger = logging.getLogger(__name__)


@dataclass
class RewardModelArguments(ModelArguments):
    """The SFT or pretrained folder the reward model starts from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "SFT or pretrained model folder (or Hub id); its LM head is dropped, a score head added."},
    )


@dataclass
class RewardTrainingConfig(RewardStageConfig):
    """TRL's RewardConfig with reward-model defaults; every TrainingArguments flag stays available."""

    output_dir: str | None = field(default="runs/reward", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Pairs per device per micro-batch."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Pairs per device per eval batch."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs."})
    max_length: int | None = field(
        default=1024, metadata={"help": "Pairs with a side longer than this many tokens are left out."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "no, steps or epoch."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N optimizer steps."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})


def reward(
    script_args: PreferenceScriptArguments,
    training_args: RewardTrainingConfig,
    model_args: RewardModelArguments,
    callbacks: list | None = None,
    probes: list[Probe] | None = None,
) -> dict:
    """Train a reward model and save a complete folder; return the run's result (see `lifecycle`) with held-out
    pairwise metrics before and after."""
    resume = start_run(training_args)
    tokenizer = resolve_tokenizer(model_args)
    train_dataset, eval_dataset, rejected = load_preference_datasets(script_args, training_args)
    turn_off_eval_without_data(training_args, eval_dataset)
    model = load_reward_model(model_args, tokenizer, training_args.trust_remote_code)
    logger.info(
        f"{count_parameters(model) / 1e6:.2f}M parameters; {len(train_dataset)} training pairs; "
        f"{len(eval_dataset) if eval_dataset is not None else 0} held-out pairs"
    )

    held_out = HeldOutProbes(probes or [], training_args.output_dir)
    trainer = RewardStageTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, "SEQ_CLS"),
        callbacks=[*(callbacks or []), held_out],
    )
    warn_if_dropped("training", len(train_dataset), trainer.train_dataset, training_args.max_length)
    if eval_dataset is not None:
        warn_if_dropped("held-out", len(eval_dataset), trainer.eval_dataset, training_args.max_length)
        measure = functools.partial(
            pairwise_metrics,
            pairs=trainer.eval_dataset,
            pad_token_id=tokenizer.pad_token_id,
            batch_size=training_args.per_device_eval_batch_size,
        )
        held_out.probes.insert(0, Probe("pairwise", measure))
    train_output = trainer.train(resume_from_checkpoint=resume)
    result = finish_run(trainer, train_output, held_out, merge_lora=True, card=RunCard.of("reward", script_args))
    result.update(
        train_pairs=len(trainer.train_dataset),
        eval_pairs=len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        rejected=rejected,
    )
    logger.info(f"Saved the reward model to {training_args.output_dir}: {result}")
    trainer.end()
    return result


def make_parser(description: str | None = None) -> RecipeParser:
    """The stage's command line: its script and the demo parse through this one parser."""
    return RecipeParser(
        (PreferenceScriptArguments, RewardTrainingConfig, RewardModelArguments), description=description
    )
