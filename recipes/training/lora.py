"""The one LoRA path of the training stages: the adapter config from the model flags, the base model's files saved
next to an adapter, and the adapter folded into the weights before a stage saves a full model."""

import trl
from peft import PeftModel
from transformers.dynamic_module_utils import custom_object_save

from modeling_miniminds.export.merge_lora import fold_adapter


def lora_config(model_args, task_type: str):
    """TRL's LoRA config from the model flags (None without --use_peft). A MiniMind model is unknown to PEFT, so the
    target modules default to every linear layer; TRL refuses LoRA on the LM head."""
    if not model_args.use_peft:
        return None
    if model_args.lora_target_modules in (None, ["all-linear"]):
        model_args.lora_target_modules = "all-linear"
    model_args.lora_task_type = task_type
    return trl.get_peft_config(model_args)


def merge_adapter(trainer) -> None:
    """Fold a trained LoRA adapter into the weights, so the saved folder is a complete model, not an adapter."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel):
        if trainer.is_deepspeed_enabled:
            raise ValueError("--use_peft under DeepSpeed: merge the adapter from a checkpoint after training")
        trainer.model = trainer.model_wrapped = fold_adapter(model)


def save_base_model_files(base_model, folder) -> None:
    """Write a LoRA base model's config, generation config and modeling code next to its adapter: the folder is then
    complete (transformers loads it as base + adapter, merge_lora turns it into a full model)."""
    if base_model._auto_class is not None:  # registered remote code, as save_pretrained checks
        custom_object_save(base_model, folder, config=base_model.config)
    base_model.config.save_pretrained(folder)
    base_model.generation_config.save_pretrained(folder)
