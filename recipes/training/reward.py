"""Reward modelling on preference pairs: the arguments, scoring and `reward()`, which `recipes/reward.py` and the demo
call.

The model is `MiniMindForSequenceClassification` with one output, loaded from an SFT or pretrained folder (its
`score` head starts fresh). It scores a conversation at its last non-pad token, so left- and right-padded batches
score alike, and it is trained with TRL's pairwise loss -log sigmoid(r_chosen - r_rejected). The saved folder is the
reward model the PPO and GRPO stages load, through `trust_remote_code` alone if need be.
"""

import functools
import logging
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForSequenceClassification
from trl.trainer.reward_trainer import suppress_seqcls_warning

from modeling_miniminds.cli.paths import check_name_or_path, from_pretrained_or_explain
from recipes.training.args import ModelArguments, RewardStageConfig
from recipes.training.models import (
    align_special_tokens,
    check_vocab_fits,
    count_parameters,
    resolve_tokenizer,
)
from recipes.training.preference import (
    BeforeAfterCallback,
    PreferenceScriptArguments,
    load_preference_datasets,
    lora_config,
    merge_adapter,
    run_summary,
    warn_if_dropped,
)
from recipes.training.runs import finish_run, start_run, turn_off_eval_without_data
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


def load_reward_model(model_args, tokenizer, trust_remote_code: bool = False):
    """A one-output sequence classifier from a causal-LM (or reward) folder, its pad id set from the tokenizer (its pad
    token, else eos): the score is read at the last token that is not padding, so a config without one cannot batch."""
    name = check_name_or_path(model_args.model_name_or_path, "model")
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    with suppress_seqcls_warning():  # the new score head and the unused lm_head are expected
        model = from_pretrained_or_explain(
            AutoModelForSequenceClassification,
            name,
            "model",
            num_labels=1,
            revision=model_args.model_revision,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
        )
    check_vocab_fits(tokenizer, model.config.vocab_size, name)
    align_special_tokens(model, tokenizer)
    return model


def pad_batch(sequences: list[list[int]], pad_token_id: int, padding_side: str = "right"):
    """`input_ids` and `attention_mask` for token lists of different lengths, padded on either side."""
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, sequence in enumerate(sequences):
        columns = slice(width - len(sequence), width) if padding_side == "left" else slice(0, len(sequence))
        input_ids[row, columns] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, columns] = 1
    return input_ids, attention_mask


@torch.no_grad()
def score_ids(
    model, sequences: list[list[int]], pad_token_id: int, padding_side: str = "right", batch_size: int = 32
) -> torch.Tensor:
    """The reward of each token sequence, in float32 on the CPU."""
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(sequences), batch_size):
        input_ids, attention_mask = pad_batch(sequences[start : start + batch_size], pad_token_id, padding_side)
        logits = model(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), use_cache=False
        ).logits
        scores.append(logits[:, 0].float().cpu())
    model.train(was_training)
    return torch.cat(scores)


def score_conversations(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32) -> list[float]:
    """The reward of whole conversations, tokenized with the chat template as in training (PPO and GRPO use this)."""
    sequences = [
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        for messages in conversations
    ]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return score_ids(model, sequences, pad_token_id, batch_size=batch_size).tolist()


def pairwise_metrics(model, pairs, pad_token_id: int, batch_size: int = 32) -> dict:
    """On tokenized pairs (`chosen_ids`, `rejected_ids`): the fraction where the chosen side scores higher, and the
    mean score of each side."""
    chosen = score_ids(model, pairs["chosen_ids"], pad_token_id, batch_size=batch_size)
    rejected = score_ids(model, pairs["rejected_ids"], pad_token_id, batch_size=batch_size)
    return {
        "pairwise_accuracy": round((chosen > rejected).float().mean().item(), 4),
        "mean_chosen_score": round(chosen.mean().item(), 4),
        "mean_rejected_score": round(rejected.mean().item(), 4),
    }


def reward(
    script_args: PreferenceScriptArguments,
    training_args: RewardTrainingConfig,
    model_args: RewardModelArguments,
    callbacks: list | None = None,
) -> dict:
    """Train a reward model and save a complete folder; return held-out `before`/`after` pairwise metrics and the
    run's summary numbers."""
    resume = start_run(training_args)
    tokenizer = resolve_tokenizer(model_args)
    train_dataset, eval_dataset, rejected = load_preference_datasets(script_args, training_args)
    turn_off_eval_without_data(training_args, eval_dataset)
    model = load_reward_model(model_args, tokenizer, training_args.trust_remote_code)
    logger.info(
        f"{count_parameters(model) / 1e6:.2f}M parameters; {len(train_dataset)} training pairs; "
        f"{len(eval_dataset) if eval_dataset is not None else 0} held-out pairs"
    )

    trainer = RewardStageTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, "SEQ_CLS"),
        callbacks=callbacks,
    )
    warn_if_dropped("training", len(train_dataset), trainer.train_dataset, training_args.max_length)
    if eval_dataset is not None:
        warn_if_dropped("held-out", len(eval_dataset), trainer.eval_dataset, training_args.max_length)
    held_out = None
    if trainer.eval_dataset is not None:
        measure = functools.partial(
            pairwise_metrics,
            pairs=trainer.eval_dataset,
            pad_token_id=tokenizer.pad_token_id,
            batch_size=training_args.per_device_eval_batch_size,
        )
        held_out = BeforeAfterCallback(measure, training_args.output_dir, "reward")
        trainer.add_callback(held_out)
    train_output = trainer.train(resume_from_checkpoint=resume)
    trainer.raise_if_interrupted()
    merge_adapter(trainer)
    eval_metrics = finish_run(trainer, tokenizer, train_output, extra_eval=held_out.after if held_out else None)
    result = {
        "before": held_out.before if held_out else {},
        "after": held_out.after if held_out else {},
        **run_summary(trainer, train_output),
        "train_pairs": len(trainer.train_dataset),
        "eval_pairs": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        "rejected": rejected,
        "eval_loss": eval_metrics.get("eval_loss"),
        "output_dir": training_args.output_dir,
    }
    logger.info(f"Saved the reward model to {training_args.output_dir}: {result}")
    trainer.end()
    return result
