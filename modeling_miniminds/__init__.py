"""MiniMind model package. Importing it registers MiniMind with the transformers Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_minimind import MiniMindConfig
from .modeling_minimind import (
    MiniMindForCausalLM,
    MiniMindForSequenceClassification,
    MiniMindModel,
    MiniMindPreTrainedModel,
)
from .presets import DEFAULT_PRESET, PRESETS, get_config

AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig, exist_ok=True)
AutoModel.register(MiniMindConfig, MiniMindModel, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(MiniMindConfig, MiniMindForSequenceClassification, exist_ok=True)

# save_pretrained copies the modeling files and writes auto_map, so saved folders load with trust_remote_code.
MiniMindConfig.register_for_auto_class()
MiniMindModel.register_for_auto_class("AutoModel")
MiniMindForCausalLM.register_for_auto_class("AutoModelForCausalLM")
MiniMindForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


def __getattr__(name):
    # Imported on first use, so importing the model does not import the export package.
    if name in ("to_qwen3", "from_qwen3"):
        from .export import qwen3

        return getattr(qwen3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "MiniMindConfig",
    "MiniMindForCausalLM",
    "MiniMindForSequenceClassification",
    "MiniMindModel",
    "MiniMindPreTrainedModel",
    "from_qwen3",
    "get_config",
    "to_qwen3",
]
