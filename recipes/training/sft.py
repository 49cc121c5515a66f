"""Supervised fine-tuning on chat data with TRL's SFTTrainer: the arguments, the trainer and `sft()`, which
`recipes/sft.py` and the demo call.

The loss covers assistant content and its end-of-turn token only, in every assistant turn of a conversation at once
(`assistant_only_loss` through the template's {% generation %} markers; a template TRL cannot mark, such as
upstream MiniMind's, gets its masks from ChatML spans, see `data_process.assistant_masks`). Conversations are packed best-fit into
rows of `max_length` tokens that attend block-diagonally, so next to no compute goes to padding: TRL's padding-free
batch (one flattened row) with a flash-attention varlen kernel, separate packed rows with sdpa or eager attention
(`PackedRowsCollator`). With `--use_peft` only LoRA adapters train. Before and after training the run measures, on held-out data, the
assistant-token loss (`eval_loss`) and, on held-out questions, the exact-answer accuracy of greedy replies and how
often they end their turn.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from transformers import Trainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from data_process.assistant_masks import with_assistant_masks
from data_process.chat import conversation_tokens, load_chat_dataset, read_system_prompts
from data_process.collators import PackedRowsCollator
from data_process.mixture import mix
from modeling_miniminds.export.merge_lora import merge_lora
from recipes.training.args import MixtureScriptArguments, ModelArguments, SFTStageConfig, training_mixture
from recipes.training.cli import RecipeParser
from recipes.training.evaluation import ChatEvalArguments, read_chat_probes
from recipes.training.lifecycle import (
    LM_EVAL,
    HeldOutProbes,
    Probe,
    RunCard,
    finish_run,
    start_run,
    turn_off_eval_without_data,
    write_card,
)
from recipes.training.lora import lora_config, save_base_model_files
from recipes.training.models import count_parameters, load_causal_lm, resolve_tokenizer
from recipes.training.probes import chat_probe
from recipes.training.trainer import SFTStageTrainer

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments(MixtureScriptArguments, ChatEvalArguments):
    """Data options of the SFT stage."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Chat data: records in the project's SFT format, upstream MiniMind's, ShareGPT, Alpaca or OpenAI "
            "messages (tools and tool calls included); a JSONL/parquet file, a folder or glob of them, or a Hub id."
        },
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out chat data for eval_loss (assistant tokens only), in any form above."}
    )
    skip_bad: bool = field(
        default=False,
        metadata={
            "help": "Count and set aside bad records (in output_dir/train.rejected.jsonl, eval.rejected.jsonl; a "
            "mixture's entries in train.<entry>.rejected.jsonl) instead of stopping at the first one."
        },
    )
    system_prompts: list[str] | None = field(
        default=None,
        metadata={
            "help": "System prompts to add to training conversations that have none: the prompts, or one file "
            "(.json list, or one prompt per line)."
        },
    )
    system_prompt_ratio: float = field(
        default=0.2, metadata={"help": "Share of conversations without a system message that get one (seeded)."}
    )


@dataclass
class SFTModelArguments(ModelArguments):
    """The model to fine-tune and, with --use_peft, its LoRA adapters."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The model to fine-tune: a saved folder (e.g. a pretraining output_dir) or a Hub id."},
    )
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get LoRA adapters; all-linear: every linear layer but lm_head."},
    )
    merge_on_save: bool = field(
        default=False,
        metadata={
            "help": "With --use_peft: write the merged full model to output_dir (the adapter to output_dir/adapter)."
        },
    )


@dataclass
class SFTRecipeConfig(SFTStageConfig):
    """SFTConfig with the stage's defaults: loss on assistant tokens only, best-fit packing, evaluation before and
    during training. Every SFTConfig and TrainingArguments flag stays available."""

    output_dir: str | None = field(default="runs/sft", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training data."})
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Packed rows (of up to max_length tokens) per device per micro-batch."}
    )
    max_length: int | None = field(default=1024, metadata={"help": "Tokens per packed row; longer chats are cut."})
    assistant_only_loss: bool = field(
        default=True, metadata={"help": "Loss on assistant content and its end-of-turn token only."}
    )
    packing: bool = field(
        default=True, metadata={"help": "Pack conversations best-fit into rows of max_length tokens."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "no, steps or epoch."})
    eval_steps: float | None = field(default=200, metadata={"help": "Evaluate every N optimizer steps."})
    eval_on_start: bool = field(default=True, metadata={"help": "Evaluate once before training (the start loss)."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most N checkpoints."})


# Attention kernels that take a flattened batch as separate sequences (cu_seq_lens) instead of attending densely.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


class SFTRecipeTrainer(SFTStageTrainer):
    """SFTStageTrainer that batches packed rows apart unless the attention kernel is varlen (see
    `PackedRowsCollator`), and whose LoRA saves are complete model folders (see `save_base_model_files`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        attention = getattr(self.accelerator.unwrap_model(self.model).config, "_attn_implementation", None)
        self.packed_rows = self.padding_free and self.args.packing and attention not in VARLEN_ATTENTION
        if self.packed_rows:
            self.data_collator = PackedRowsCollator(self.processing_class.pad_token_id)
        self.model_loss = (
            self.args.device.type == "cpu"
            and self.args.loss_type == "nll"
            and self.label_smoother is None
            and self.compute_loss_func is None
            and not self.aux_loss_enabled
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """On CPU the model's own loss (`model_loss_and_metrics`); elsewhere TRL's, whose logged `num_tokens` counts a
        batch without attention mask as one row of `position_ids.size(1)` tokens: packed rows hold `input_ids.numel()`."""
        if self.model_loss:
            return self.model_loss_and_metrics(model, inputs, return_outputs, num_items_in_batch)
        counted = self._total_train_tokens
        output = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.packed_rows and model.training:
            tokens = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens = counted + self.accelerator.gather_for_metrics(tokens).sum().item()
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return output

    def model_loss_and_metrics(self, model, inputs, return_outputs, num_items_in_batch):
        """On CPU, the model's own cross-entropy: TRL's chunked log-prob head (which saves GPU memory on large
        vocabularies) made the demo's SFT steps 1.65x slower on 2 cores, for the same loss. The metrics TRL logs
        (token accuracy, entropy, tokens seen) come from the logits."""
        mode = "train" if model.training else "eval"
        loss, outputs = Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, True, num_items_in_batch)
        with torch.no_grad():
            logits, labels = outputs.logits[:, :-1], inputs["labels"][:, 1:]
            mask = labels != -100
            log_probs = logits.float().log_softmax(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            attention = inputs.get("attention_mask")
            tokens = attention.sum() if attention is not None else torch.tensor(inputs["input_ids"].numel())
            stats = torch.stack([mask.sum(), entropy[mask].sum(), (logits.argmax(-1) == labels)[mask].sum(), tokens])
            valid, entropy_sum, correct, tokens = self.accelerator.gather_for_metrics(stats.float()[None]).sum(0)
        self._metrics[mode]["entropy"].append((entropy_sum / valid.clamp(min=1)).item())
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid.clamp(min=1)).item())
        if mode == "train":
            self._total_train_tokens += int(tokens)
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save and isinstance(model, PeftModel):
            save_base_model_files(model.get_base_model(), output_dir or self.args.output_dir)


def load_datasets(script_args: SFTScriptArguments, training_args: SFTRecipeConfig, tokenizer):
    """Training and held-out conversations (None without --eval_dataset_name), the number of records skipped and,
    with --dataset_mixture, what the mixture holds of each source (else None)."""
    sources = training_mixture(script_args)
    if not (script_args.dataset_name or sources):
        raise ValueError("pass --dataset_name (the chat data: a file, folder, glob or Hub id) or --dataset_mixture")
    output_dir = Path(training_args.output_dir)
    options = {"skip_bad": script_args.skip_bad, "write_rejected": training_args.should_save}
    augment = {
        "system_prompts": read_system_prompts(script_args.system_prompts),
        "system_prompt_ratio": script_args.system_prompt_ratio,
        "seed": training_args.seed,
    }
    with training_args.main_process_first(desc="load chat data"):
        if sources:
            train, train_rejected, mixture = _mixture(sources, training_args, tokenizer, **options, **augment)
        else:
            train, train_rejected = load_chat_dataset(
                script_args.dataset_name,
                split=script_args.dataset_train_split,
                rejected_path=output_dir / "train.rejected.jsonl",
                **options,
                **augment,
            )
            mixture = None
        evaluation, eval_rejected = None, 0
        if script_args.eval_dataset_name:
            evaluation, eval_rejected = load_chat_dataset(
                script_args.eval_dataset_name,
                split=script_args.dataset_test_split,
                rejected_path=output_dir / "eval.rejected.jsonl",
                **options,
            )
    return train, evaluation, {"train": train_rejected, "eval": eval_rejected}, mixture


def _mixture(sources, training_args: SFTRecipeConfig, tokenizer, **options):
    """The mixture's conversations, the records its sources skipped (each entry's in its own
    `train.<entry>.rejected.jsonl`) and what it holds of each source. Weights are shares of conversations."""
    output_dir = Path(training_args.output_dir)
    loaded = [
        load_chat_dataset(
            source.path, split=source.split, rejected_path=output_dir / f"train.{index}.rejected.jsonl", **options
        )
        for index, source in enumerate(sources, 1)
    ]
    parts = [rows for rows, _ in loaded]
    counts = [
        {
            "documents": np.ones(len(rows), dtype=np.int64),
            "tokens": conversation_tokens(rows, tokenizer, training_args.max_length, training_args.dataset_num_proc),
        }
        for rows in parts
    ]
    train, mixture = mix(parts, sources, counts, "documents", training_args.seed)
    return train, sum(rejected for _, rejected in loaded), mixture


def trl_marks_assistant_tokens(tokenizer) -> bool:
    """Whether TRL finds the assistant tokens itself: through the template's generation markers, or through a
    training template TRL ships for this chat template."""
    if has_generation_markers(tokenizer.chat_template):
        return True
    try:
        return get_training_chat_template(tokenizer) is not None
    except ValueError:
        return False


def mask_assistant_spans(datasets: list, tokenizer, training_args: SFTRecipeConfig) -> list:
    """The chat datasets tokenized with ChatML-span assistant masks when the loss is on assistant tokens and TRL
    cannot mark them; TRL then trains on the masks as given, so its own marking is turned off."""
    if not training_args.assistant_only_loss or trl_marks_assistant_tokens(tokenizer):
        return datasets
    logger.info("the chat template has no {% generation %} markers: assistant tokens are found by ChatML spans")
    with training_args.main_process_first(desc="tokenize with assistant masks"):
        datasets = [None if rows is None else with_assistant_masks(rows, tokenizer) for rows in datasets]
    training_args.assistant_only_loss = False
    return datasets


def sft(
    script_args: SFTScriptArguments,
    training_args: SFTRecipeConfig,
    model_args: SFTModelArguments,
    callbacks: list | None = None,
    probes: list[Probe] | None = None,
) -> dict:
    """Fine-tune and save the model (or its LoRA adapter); return the run's result (see `lifecycle`) with the
    held-out numbers before and after training: assistant-token `eval_loss` and `perplexity`, and on held-out
    questions accuracy, task_accuracy, eot_rate, per_family and samples; with --dataset_mixture, what it held of each
    source (`mixture`)."""
    if model_args.merge_on_save and not model_args.use_peft:
        raise ValueError("--merge_on_save merges LoRA adapters; pass it with --use_peft true")
    if not model_args.model_name_or_path:
        raise ValueError("pass --model_name_or_path: the model to fine-tune (e.g. a pretraining run's output_dir)")
    resume = start_run(training_args)
    tokenizer = resolve_tokenizer(model_args)
    model = load_causal_lm(model_args, tokenizer, training_args.trust_remote_code)
    train_dataset, eval_dataset, rejected, mixture = load_datasets(script_args, training_args, tokenizer)
    train_dataset, eval_dataset = mask_assistant_spans([train_dataset, eval_dataset], tokenizer, training_args)
    turn_off_eval_without_data(training_args, eval_dataset)
    chat = chat_probe(tokenizer, read_chat_probes(script_args), script_args.chat_eval_max_new_tokens)
    held_out = HeldOutProbes([*chat, *(probes or [])], training_args.output_dir)
    trainer = SFTRecipeTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, "CAUSAL_LM"),
        callbacks=[*(callbacks or []), held_out],
    )
    logger.info(
        f"{count_parameters(trainer.model) / 1e6:.2f}M parameters, "
        f"{count_parameters(trainer.model, trainable_only=True) / 1e6:.3f}M trained; {len(train_dataset)} "
        f"conversations in {len(trainer.train_dataset)} rows of <= {training_args.max_length} tokens; "
        f"bf16={training_args.bf16} fp16={training_args.fp16}"
    )
    train_output = trainer.train(resume_from_checkpoint=resume)
    card = RunCard.of("sft", script_args)
    result = finish_run(trainer, train_output, held_out, logged=LM_EVAL, card=card)
    if model_args.merge_on_save and training_args.should_save:
        merge_lora(training_args.output_dir, training_args.output_dir)  # moves the card to adapter/ with the adapter
        write_card(training_args.output_dir, card, model_args.model_name_or_path)
    trainer.accelerator.wait_for_everyone()
    result["rejected"] = rejected
    if mixture is not None:
        result["mixture"] = mixture
    logger.info(f"Saved to {training_args.output_dir}: before {result['before']}, after {result['after']}")
    trainer.end()
    return result


def make_parser(description: str | None = None) -> RecipeParser:
    """The stage's command line: its script and the demo parse through this one parser."""
    return RecipeParser((SFTScriptArguments, SFTRecipeConfig, SFTModelArguments), description=description)
