"""Pretraining on packed text: `pretrain()`, which `recipes/pretrain.py` and the demo call, and its command line
(the arguments and trainer are `packed_text`'s, shared with distillation)."""

import logging

from recipes.training.cli import RecipeParser
from recipes.training.lifecycle import Probe, start_run, turn_off_eval_without_data
from recipes.training.models import count_parameters, resolve_tokenizer
from recipes.training.packed_text import (
    LORA_FLAGS,
    PretrainConfig,
    PretrainModelArguments,
    PretrainScriptArguments,
    PretrainTrainer,
    build_model,
    load_datasets,
    train_on_blocks,
)

logger = logging.getLogger(__name__)


def pretrain(
    script_args: PretrainScriptArguments,
    training_args: PretrainConfig,
    model_args: PretrainModelArguments,
    callbacks: list | None = None,
    probes: list[Probe] | None = None,
) -> dict:
    """Pretrain and save a complete model folder; return the run's result (see `lifecycle`): held-out eval loss and
    perplexity, with any `probes`, before and after, and with --dataset_mixture what it held of each source."""
    if model_args.use_peft:
        raise ValueError("--use_peft: pretraining trains every weight; LoRA belongs to the post-training stages")
    resume = start_run(training_args)
    tokenizer = resolve_tokenizer(model_args)
    model = build_model(model_args, tokenizer, script_args.block_size, training_args.trust_remote_code)
    train_dataset, eval_dataset, mixture = load_datasets(script_args, training_args, tokenizer, model.config.vocab_size)
    turn_off_eval_without_data(training_args, eval_dataset)
    logger.info(
        f"{count_parameters(model) / 1e6:.2f}M parameters; {len(train_dataset)} training blocks of "
        f"{script_args.block_size} tokens; {len(eval_dataset) if eval_dataset is not None else 0} eval blocks; "
        f"bf16={training_args.bf16} fp16={training_args.fp16}"
    )

    return train_on_blocks(
        "pretrain",
        PretrainTrainer,
        model,
        tokenizer,
        script_args,
        training_args,
        (train_dataset, eval_dataset),
        resume,
        callbacks,
        probes,
        mixture=mixture,
    )


def make_parser(description: str | None = None) -> RecipeParser:
    """The stage's command line: its script and the demo parse through this one parser."""
    return RecipeParser(
        (PretrainScriptArguments, PretrainConfig, PretrainModelArguments),
        description=description,
        hidden_flags=LORA_FLAGS,
    )
