"""Training a causal LM on packed text blocks: the arguments, the trainer (with the MoE balancing loss), the model
built from a preset and the blocks loaded, which pretraining and distillation share."""

import logging
from dataclasses import dataclass, field

import torch
from datasets import concatenate_datasets
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from data_process.collators import PackedBlockCollator, PackedRowsCollator
from data_process.mixture import mix
from data_process.pack import load_blocks, row_counts
from modeling_miniminds import get_config
from recipes.training.args import MiniMindsDefaults, MixtureScriptArguments, ModelArguments, training_mixture
from recipes.training.lifecycle import LM_EVAL, HeldOutProbes, Probe, RunCard, finish_run
from recipes.training.models import load_causal_lm
from recipes.training.trainer import MiniMindsTrainerMixin

# TRL's ModelConfig brings LoRA flags to every stage; pretraining trains all weights.
LORA_FLAGS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")

logger = logging.getLogger(__name__)


@dataclass
class PretrainScriptArguments(MixtureScriptArguments):
    """Data options of the pretraining stage."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training text: a JSONL/parquet/.txt file, a folder or glob of them, a packed dataset folder from "
            "data_process.pack (used as is), or a Hub dataset id."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    eval_split_size: float = field(
        default=0.005,
        metadata={
            "help": "Without --eval_dataset_name: blocks held out from the training data (from each source of a "
            "mixture), as a fraction (< 1) or a count (>= 1). 0 disables evaluation."
        },
    )
    block_size: int = field(default=512, metadata={"help": "Tokens per packed training sequence."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenizing and packing."})
    document_mask: bool = field(
        default=True,
        metadata={
            "help": "Keep documents packed in one block from attending to each other (position_ids restart per "
            "document). false trains on plain contiguous blocks."
        },
    )
    packing: str = field(
        default="stream",
        metadata={
            "help": "How text becomes rows: stream (documents back to back, cut into full blocks) or best_fit (whole "
            "documents placed best-fit, every row starting at a document start, as upstream MiniMind's samples do; "
            "a document longer than a block loses its tail, counted in the log)."
        },
    )
    max_train_blocks: int | None = field(
        default=None, metadata={"help": "Use at most this many training blocks (quick runs); default all."}
    )


@dataclass
class PretrainModelArguments(ModelArguments):
    """A model built from a preset or config, or a saved one to continue."""

    model_config: str = field(
        default="minimind-64m",
        metadata={
            "help": "Model to build from scratch: a preset (minimind-tiny, minimind-26m, minimind-64m, minimind-104m, "
            "minimind-moe) or a config.json / folder. vocab_size and special token ids come from the tokenizer."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue pretraining this saved model instead of building a new one."}
    )


@dataclass
class PretrainConfig(MiniMindsDefaults, TrainingArguments):
    """TrainingArguments with pretraining defaults; every TrainingArguments flag stays available."""

    output_dir: str | None = field(default="runs/pretrain", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, on >=2-D weights only."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Blocks per device per micro-batch."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Blocks per device per eval batch."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training data."})
    include_num_input_tokens_seen: str = field(
        default="non_padding",
        metadata={"help": "Count input tokens (non_padding, all or no): best_fit rows are padded in the batch."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "no, steps or epoch."})
    eval_steps: float | None = field(default=200, metadata={"help": "Evaluate every N optimizer steps."})
    eval_on_start: bool = field(default=True, metadata={"help": "Evaluate once before training (the start loss)."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most N checkpoints."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns: the packing collator picks its own."}
    )


class PretrainTrainer(MiniMindsTrainerMixin, Trainer):
    """The transformers Trainer with the MiniMinds additions, and the MoE load-balancing loss weighted and logged
    the way TRL's trainers do it."""

    reports_perplexity = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._aux_loss_sum, self._aux_loss_count = None, 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model adds `coef * aux_loss` to each micro-batch loss. When the Trainer normalises the LM loss by the
        token count of the whole accumulated batch it no longer divides by the accumulation steps, so the aux term
        would count `gradient_accumulation_steps` times over; it is rescaled here. Evaluation reports the LM loss
        alone, so eval perplexity means perplexity."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
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
        if "loss" in logs and self._aux_loss_count:
            mean_aux = self.accelerator.reduce(self._aux_loss_sum / self._aux_loss_count, reduction="mean")
            logs["aux_loss"] = round(mean_aux.item(), 6)
            self._aux_loss_sum, self._aux_loss_count = None, 0
        super().log(logs, start_time)


def build_model(model_args: PretrainModelArguments, tokenizer, block_size: int, trust_remote_code: bool = False):
    """A new model from a preset or config whose vocabulary is the tokenizer's, or a saved model to continue."""
    if model_args.model_name_or_path:
        model = load_causal_lm(model_args, tokenizer, trust_remote_code)
    else:
        config = get_config(
            model_args.model_config,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=model_args.attn_implementation, dtype=torch.float32
        )
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and block_size > max_positions:
        raise ValueError(f"--block_size {block_size} exceeds the model's max_position_embeddings {max_positions}.")
    return model


def load_datasets(script_args: PretrainScriptArguments, training_args: PretrainConfig, tokenizer, vocab_size: int):
    """Training blocks, held-out blocks (None when evaluation is off) and, with --dataset_mixture, what the mixture
    holds of each source (else None). A mixture's held-out blocks come out of each source before it is sampled, so
    no copy of a held-out block is trained on when a source repeats."""
    sources = training_mixture(script_args)
    if not (script_args.dataset_name or sources):
        raise ValueError(
            "pass --dataset_name (the training text: a file, folder, glob, packed dataset or Hub id) or "
            "--dataset_mixture"
        )
    blocks = dict(
        tokenizer=tokenizer,
        block_size=script_args.block_size,
        vocab_size=vocab_size,
        text_column=script_args.text_column,
        num_proc=script_args.num_proc,
        packing=script_args.packing,
    )
    if script_args.packing == "best_fit" and not script_args.document_mask:
        raise ValueError("--packing best_fit keeps every document on its own; it needs --document_mask true")
    if sources:
        named = [(source.path, source.split) for source in sources]
    else:
        named = [(script_args.dataset_name, script_args.dataset_train_split)]
    with training_args.main_process_first(desc="tokenize and pack"):
        parts = [load_blocks(name, split=split, **blocks) for name, split in named]
        evaluation = None
        if script_args.eval_dataset_name:
            evaluation = load_blocks(script_args.eval_dataset_name, split=script_args.dataset_test_split, **blocks)
        elif script_args.eval_split_size > 0 and training_args.eval_strategy != "no":
            size, seed = script_args.eval_split_size, training_args.seed
            splits = [hold_out(part, size, seed, name) for part, (name, _) in zip(parts, named)]
            parts = [train for train, _ in splits]
            evaluation = concatenate_datasets([held for _, held in splits])
    best_fit = "seq_lengths" in parts[0].column_names
    if evaluation is not None and best_fit != ("seq_lengths" in evaluation.column_names):
        raise ValueError(
            f"{script_args.eval_dataset_name}: packed differently from the training data (best_fit rows against full "
            "blocks); pack both the same way"
        )
    if sources:
        counts = [dict(zip(("documents", "tokens"), row_counts(part, tokenizer.eos_token_id))) for part in parts]
        train, mixture = mix(parts, sources, counts, "tokens", training_args.seed, script_args.max_train_blocks)
        return train, evaluation, mixture
    train = parts[0]
    if script_args.max_train_blocks is not None:
        train = train.select(range(min(script_args.max_train_blocks, len(train))))
    return train, evaluation, None


def hold_out(train, size: float, seed: int, name: str) -> tuple:
    """(training, held-out) blocks of the dataset `name`: `size` of them held out, a fraction (< 1) or a count
    (>= 1)."""
    count_or_fraction = int(size) if size >= 1 else size
    if (isinstance(count_or_fraction, int) and count_or_fraction >= len(train)) or len(train) < 2:
        raise ValueError(
            f"--eval_split_size {size} leaves no training data out of the {len(train)} blocks of {name}; lower it or "
            "pass --eval_dataset_name."
        )
    split = train.train_test_split(test_size=count_or_fraction, seed=seed)
    return split["train"], split["test"]


def rows_collator(train_dataset, tokenizer, document_mask: bool):
    """Best-fit rows (with `seq_lengths`) are padded to the longest in the batch; full blocks are stacked."""
    if "seq_lengths" in train_dataset.column_names:
        return PackedRowsCollator(pad_token_id=tokenizer.pad_token_id)
    return PackedBlockCollator(document_mask=document_mask)


def train_on_blocks(
    stage: str,
    trainer_class: type[PretrainTrainer],
    model,
    tokenizer,
    script_args: PretrainScriptArguments,
    training_args: PretrainConfig,
    datasets: tuple,
    resume: str | None,
    callbacks: list | None = None,
    probes: list[Probe] | None = None,
    mixture: dict | None = None,
    **trainer_kwargs,
) -> dict:
    """The run pretraining and distillation share: train on the (training, held-out) packed blocks with the probes
    before and after, save the complete model folder (its card naming `stage`) and return the run's result (see
    `lifecycle`), with what a `mixture` held of each source under `mixture`. `trainer_kwargs` (the distillation
    teacher) go to `trainer_class`."""
    held_out = HeldOutProbes(probes or [], training_args.output_dir)
    train_dataset, eval_dataset = datasets
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=rows_collator(train_dataset, tokenizer, script_args.document_mask),
        callbacks=[*(callbacks or []), held_out],
        **trainer_kwargs,
    )
    card = RunCard.of(stage, script_args)
    result = finish_run(trainer, trainer.train(resume_from_checkpoint=resume), held_out, logged=LM_EVAL, card=card)
    if mixture is not None:
        result["mixture"] = mixture
    logger.info(f"Saved the model to {training_args.output_dir}: {result}")
    trainer.end()
    return result
