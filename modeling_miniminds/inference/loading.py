"""A saved model and its tokenizer loaded for decoding."""

import torch

from .packing import prepare_for_decoding


def load_for_decoding(
    model_dir, device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False, what: str = "model"
):
    """A saved causal LM (a MiniMinds folder or a Qwen3 export) and its tokenizer, ready for `Generator`.

    MiniMinds folders load through the installed package's classes unless `trust_remote_code` asks for the modeling
    files saved in the folder.
    """
    from transformers import AutoModelForCausalLM

    from .. import MiniMindConfig  # noqa: F401  (registers MiniMind with the Auto classes)
    from ..cli.paths import check_name_or_path, from_pretrained_or_explain
    from ..tokenizer import load_tokenizer

    name = check_name_or_path(model_dir, what)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = from_pretrained_or_explain(
        AutoModelForCausalLM, name, what, dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    return prepare_for_decoding(model.to(device)), load_tokenizer(name)
