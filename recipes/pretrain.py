"""Pretrain a MiniMind model from scratch, or continue pretraining one, on packed text.

```bash
# CPU demo on the built-in corpus (minimind-tiny, a couple of minutes)
python -m data_process.synth --out data/builtin --size tiny
python recipes/tokenizer.py --dataset_name data/builtin/pretrain.jsonl --output_dir runs/tokenizer
python recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml \
    --dataset_name data/builtin/pretrain.jsonl --eval_dataset_name data/builtin/eval/pretrain.jsonl \
    --tokenizer_name_or_path runs/tokenizer --output_dir runs/pretrain-tiny

# One GPU, the default 64M model; any TrainingArguments flag overrides the recipe file
python recipes/pretrain.py --config recipes/configs/pretrain_64m.yaml \
    --dataset_name data/pretrain_hq.jsonl --tokenizer_name_or_path runs/tokenizer --output_dir runs/pretrain-64m

# Several GPUs: the other three launchers (same recipe flags after the script)
accelerate launch --config_file ds_configs/zero2.yaml recipes/pretrain.py --config recipes/configs/pretrain_104m.yaml
torchrun --nproc_per_node 8 recipes/pretrain.py --deepspeed ds_configs/zero2.json --config ...
deepspeed --num_gpus 8 recipes/pretrain.py --deepspeed ds_configs/zero3.json --config ...

# Continue an interrupted run from its latest complete checkpoint
python recipes/pretrain.py --config recipes/configs/pretrain_64m.yaml ... --resume_from_checkpoint auto
```
"""

import logging
import math
from dataclasses import dataclass, field

import pyarrow.compute as pc
import torch
from transformers import AutoModelForCausalLM, IntervalStrategy, Trainer, TrainingArguments, set_seed
from trl import TrlParser

from data_process.loading import load_text_dataset
from data_process.pack import pack_dataset
from modeling_miniminds import get_config
from recipes.tokenizer import load_tokenizer
from recipes.utils import (
    MiniMindsTrainerMixin,
    check_vocab_fits,
    count_parameters,
    init_distributed,
    prepare_output_dir,
    resolve_precision,
    resolve_resume_checkpoint,
    save_final_model,
)

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments:
    """Data options of the pretraining stage."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training text: a JSONL/parquet file, a folder or glob of them, a packed dataset folder from "
            "data_process.pack (used as is), or a Hub dataset id."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to read from --dataset_name."})
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Held-out text for validation loss and perplexity, in any --dataset_name form."},
    )
    eval_split_size: float = field(
        default=0.005,
        metadata={
            "help": "Without --eval_dataset_name: blocks held out from the training data, as a fraction (< 1) or a "
            "count (>= 1). 0 disables evaluation."
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
    max_train_blocks: int | None = field(
        default=None, metadata={"help": "Use at most this many training blocks (quick runs); default all."}
    )


@dataclass
class ModelArguments:
    """Which model to train and with which tokenizer."""

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
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; defaults to --model_name_or_path."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "eager, sdpa, flash_attention_2 or flex_attention."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow remote code when loading --model_name_or_path (non-MiniMind models)."}
    )


@dataclass
class PretrainConfig(TrainingArguments):
    """TrainingArguments with pretraining defaults; every TrainingArguments flag stays available.

    Extra fields: `min_lr_rate` (final learning rate as a fraction of `learning_rate`, for `cosine_with_min_lr` and
    `warmup_stable_decay`), `decay_ratio` (share of the steps spent decaying in `warmup_stable_decay`) and
    `overwrite_output_dir` (start over in a folder that holds checkpoints).
    `bf16`/`fp16` left unset pick bf16 on GPUs that support it, fp16 on other GPUs and fp32 on CPU. Input tokens are
    always counted (`include_num_input_tokens_seen`), since tokens/s is reported.
    """

    output_dir: str | None = field(default="runs/pretrain", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(
        default="cosine_with_min_lr",
        metadata={"help": "cosine_with_min_lr, warmup_stable_decay, or any transformers scheduler name."},
    )
    min_lr_rate: float = field(
        default=0.1, metadata={"help": "Final learning rate as a fraction of --learning_rate."}
    )
    decay_ratio: float = field(
        default=0.2, metadata={"help": "warmup_stable_decay: fraction of the training steps spent decaying."}
    )
    warmup_steps: float = field(
        default=0.02, metadata={"help": "Warmup steps: a count, or a fraction (< 1) of the training steps."}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, on >=2-D weights only."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Blocks per device per micro-batch."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Blocks per device per eval batch."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training data."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "no, steps or epoch."})
    eval_steps: float | None = field(default=200, metadata={"help": "Evaluate every N optimizer steps."})
    eval_on_start: bool = field(default=True, metadata={"help": "Evaluate once before training (the start loss)."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most N checkpoints."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns: the packing collator picks its own."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start from scratch in an output_dir that holds checkpoints, deleting them."},
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; unset: automatic."})
    fp16: bool | None = field(default=None, metadata={"help": "fp16 mixed precision; unset: automatic."})

    def __post_init__(self):
        self.bf16, self.fp16 = resolve_precision(self.bf16, self.fp16, self.use_cpu)
        if self.use_cpu or not torch.cuda.is_available():
            self.dataloader_pin_memory = False
        super().__post_init__()
        if self.include_num_input_tokens_seen == "no":
            self.include_num_input_tokens_seen = "all"
        if self.lr_scheduler_type in ("cosine_with_min_lr", "warmup_stable_decay"):
            key = "min_lr_rate" if self.lr_scheduler_type == "cosine_with_min_lr" else "min_lr_ratio"
            kwargs = dict(self.lr_scheduler_kwargs or {})
            if "min_lr" not in kwargs:
                kwargs.setdefault(key, self.min_lr_rate)
            self.lr_scheduler_kwargs = kwargs


class PretrainTrainer(MiniMindsTrainerMixin, Trainer):
    """The transformers Trainer with the MiniMinds recipe additions."""


@dataclass
class PackedBlockCollator:
    """Stack fixed-length blocks into a batch with no padding and no attention mask.

    With `document_mask`, `position_ids` restart at every document, which makes the attention block-diagonal, and the
    first token of each document is not a target: nothing before it in the block may be used to predict it.
    """

    document_mask: bool = True

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows])
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if self.document_mask and "position_ids" in rows[0]:
            position_ids = torch.stack([torch.as_tensor(row["position_ids"], dtype=torch.long) for row in rows])
            batch["labels"][position_ids == 0] = -100
            batch["position_ids"] = position_ids
        return batch


def resolve_tokenizer(model_args: ModelArguments):
    """The tokenizer from --tokenizer_name_or_path, else from --model_name_or_path."""
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name is None:
        raise ValueError("Pass --tokenizer_name_or_path (or --model_name_or_path to reuse that model's tokenizer).")
    return load_tokenizer(name)


def build_model(model_args: ModelArguments, tokenizer, block_size: int):
    """A new model from a preset or config whose vocabulary is the tokenizer's, or a saved model to continue."""
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=model_args.trust_remote_code,
            dtype=torch.float32,
        )
        check_vocab_fits(tokenizer, model.config.vocab_size, model_args.model_name_or_path)
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


def check_blocks(dataset, name: str, block_size: int, vocab_size: int) -> None:
    """Packed blocks must all be `block_size` long and hold only ids the model's embedding table has."""
    if len(dataset) == 0:
        raise ValueError(
            f"{name}: no complete {block_size}-token block; the dataset holds fewer tokens than --block_size."
        )
    input_ids = dataset.data.column("input_ids")
    lengths = pc.list_value_length(input_ids)
    shortest, longest = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    if shortest != block_size or longest != block_size:
        raise ValueError(
            f"{name}: packed blocks are {shortest}..{longest} tokens long but --block_size is {block_size}; "
            "re-pack the data or pass the block size it was packed with."
        )
    max_id = pc.max(pc.list_flatten(input_ids)).as_py()
    if max_id >= vocab_size:
        raise ValueError(
            f"{name}: token id {max_id} is outside the model's vocabulary of {vocab_size}; the data was packed "
            "with a different tokenizer."
        )


def load_blocks(name: str, split: str, tokenizer, script_args: ScriptArguments, vocab_size: int):
    """Read a dataset and pack it into blocks, unless it is packed already."""
    dataset = load_text_dataset(name, split=split, text_column=script_args.text_column)
    if "input_ids" not in dataset.column_names:
        dataset = pack_dataset(
            dataset,
            tokenizer,
            script_args.block_size,
            text_column=script_args.text_column,
            num_proc=script_args.num_proc,
        )
    check_blocks(dataset, name, script_args.block_size, vocab_size)
    return dataset


def load_datasets(script_args: ScriptArguments, training_args: PretrainConfig, tokenizer, vocab_size: int):
    """Training blocks and held-out blocks (None when evaluation is off)."""
    if not script_args.dataset_name:
        raise ValueError("Pass --dataset_name: the training text (a file, folder, glob, packed dataset or Hub id).")
    with training_args.main_process_first(desc="tokenize and pack"):
        train = load_blocks(script_args.dataset_name, script_args.dataset_split, tokenizer, script_args, vocab_size)
        evaluation = None
        if script_args.eval_dataset_name:
            evaluation = load_blocks(script_args.eval_dataset_name, "train", tokenizer, script_args, vocab_size)
        elif script_args.eval_split_size > 0 and training_args.eval_strategy != "no":
            size = script_args.eval_split_size
            size = int(size) if size >= 1 else size
            if (isinstance(size, int) and size >= len(train)) or len(train) < 2:
                raise ValueError(
                    f"--eval_split_size {script_args.eval_split_size} leaves no training data out of {len(train)} "
                    "blocks; lower it or pass --eval_dataset_name."
                )
            split = train.train_test_split(test_size=size, seed=training_args.seed)
            train, evaluation = split["train"], split["test"]
    if script_args.max_train_blocks is not None:
        train = train.select(range(min(script_args.max_train_blocks, len(train))))
    return train, evaluation


def summarize(trainer, train_metrics: dict) -> dict:
    """The numbers a report needs, from the trainer's log history: `*_first` is the first logged value (eval: before
    any training step), the plain key the last; `tokens_per_second` leaves out evaluation and checkpoint time."""
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {
        "output_dir": trainer.args.output_dir,
        "train_loss": train_losses[-1] if train_losses else None,
        "train_loss_first": train_losses[0] if train_losses else None,
        "eval_loss_first": eval_losses[0] if eval_losses else None,
        "eval_loss": eval_losses[-1] if eval_losses else None,
        "perplexity": math.exp(min(eval_losses[-1], 50.0)) if eval_losses else None,
        "tokens_per_second": trainer.training_tokens_per_second(),
        "train_runtime": train_metrics.get("train_runtime"),
        "global_step": trainer.state.global_step,
        "num_tokens": trainer.state.num_input_tokens_seen,
        "num_parameters": count_parameters(trainer.accelerator.unwrap_model(trainer.model)),
    }


def main(
    script_args: ScriptArguments,
    training_args: PretrainConfig,
    model_args: ModelArguments,
    callbacks: list | None = None,
) -> dict:
    """Pretrain and save a complete model folder; return the run's summary numbers."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    init_distributed(training_args)
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    prepare_output_dir(
        training_args.output_dir,
        resuming=resume is not None,
        overwrite=training_args.overwrite_output_dir,
        is_main_process=training_args.should_save,
    )

    set_seed(training_args.seed)
    tokenizer = resolve_tokenizer(model_args)
    model = build_model(model_args, tokenizer, script_args.block_size)
    train_dataset, eval_dataset = load_datasets(script_args, training_args, tokenizer, model.config.vocab_size)
    if eval_dataset is None:
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.eval_on_start = False
    logger.info(
        f"{count_parameters(model) / 1e6:.2f}M parameters; {len(train_dataset)} training blocks of "
        f"{script_args.block_size} tokens; {len(eval_dataset) if eval_dataset is not None else 0} eval blocks; "
        f"bf16={training_args.bf16} fp16={training_args.fp16}"
    )

    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=PackedBlockCollator(document_mask=script_args.document_mask),
        callbacks=callbacks,
    )
    if resume:
        logger.info(f"Resuming from {resume}")
        training_args.eval_on_start = False  # the start loss is already in the restored log history
    train_output = trainer.train(resume_from_checkpoint=resume)
    last_eval_step = max((h["step"] for h in trainer.state.log_history if "eval_loss" in h), default=None)
    if eval_dataset is not None and last_eval_step != trainer.state.global_step:
        trainer.evaluate()
    trainer.log_metrics("train", train_output.metrics)
    trainer.save_metrics("train", train_output.metrics)
    trainer.save_state()
    save_final_model(trainer, tokenizer)
    result = summarize(trainer, train_output.metrics)
    logger.info(f"Saved the model to {training_args.output_dir}: {result}")
    trainer.end()
    return result


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, PretrainConfig, ModelArguments))


if __name__ == "__main__":
    from recipes.pretrain import main, make_parser  # by module name, so pickled training args load anywhere

    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
