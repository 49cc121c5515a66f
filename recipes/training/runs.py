"""The start and the end every stage's run shares: distributed setup, resume and output folder, then the final
evaluation, the HF metric files (`all_results.json`, `eval_results.json`) and the complete model folder."""

import logging

from transformers import IntervalStrategy, set_seed

from recipes.training.args import setup_distributed
from recipes.training.checkpoints import prepare_output_dir, resolve_resume_checkpoint
from recipes.training.models import save_final_model

logger = logging.getLogger(__name__)


def start_run(training_args) -> str | None:
    """Set up the process group, find the checkpoint to resume from (None: a fresh run), prepare the output folder
    and seed everything. Call before building the model."""
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
        logger.info(f"Resuming from {resume}")
    return resume


def turn_off_eval_without_data(training_args, eval_dataset) -> None:
    """No held-out data: no periodic evaluation and no start loss, instead of the Trainer refusing to start."""
    if eval_dataset is None:
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.eval_on_start = False


def finish_run(trainer, tokenizer, train_output, extra_eval: dict | None = None) -> dict:
    """After `train()`: stop here if a signal ended it, evaluate once more unless the last step just did, write
    `train_results.json`, `eval_results.json` and `all_results.json`, save the trainer state and the final model.
    `extra_eval` (held-out metrics the stage measured itself) joins the eval results. Returns the eval metrics."""
    trainer.raise_if_interrupted()
    trainer.log_metrics("train", train_output.metrics)
    trainer.save_metrics("train", train_output.metrics)
    eval_metrics = {}
    if trainer.eval_dataset is not None:
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        if evals and evals[-1]["step"] == trainer.state.global_step:
            eval_metrics = {k: v for k, v in evals[-1].items() if k.startswith("eval_")}
        else:
            eval_metrics = trainer.evaluate()
    eval_metrics.update({f"eval_{key}": value for key, value in (extra_eval or {}).items()})
    if eval_metrics:
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    trainer.save_state()
    save_final_model(trainer, tokenizer)
    return eval_metrics
