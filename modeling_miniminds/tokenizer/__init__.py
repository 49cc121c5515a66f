"""The MiniMinds tokenizer: the chat format (`chat_format`), byte-level BPE training (`bpe`), the reply parser
(`replies`) and loading of any existing tokenizer unchanged (here).

`RESPONSE_TEMPLATE` tells `tokenizer.parse_response` how to read a generated reply back into a message: TRL's GRPO
tool loop needs it and recognises only the templates of known models. Tokenizers built here save it in
`tokenizer_config.json`; `load_tokenizer` adds it to older folders with this template.
"""

from transformers import AutoTokenizer

from ..cli.paths import check_name_or_path, from_pretrained_or_explain
from .bpe import build_bpe, train_tokenizer, wrap_tokenizer
from .chat_format import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    OLLAMA_TEMPLATE,
    PAD,
    RESPONSE_TEMPLATE,
    SPECIAL_TOKENS,
    TAG_TOKENS,
    add_response_template,
)
from .replies import Reply, ReplyStream, parse_reply

__all__ = [
    "BOS",
    "CHAT_TEMPLATE",
    "EOS",
    "OLLAMA_TEMPLATE",
    "PAD",
    "RESPONSE_TEMPLATE",
    "SPECIAL_TOKENS",
    "TAG_TOKENS",
    "Reply",
    "ReplyStream",
    "add_response_template",
    "build_bpe",
    "load_tokenizer",
    "parse_reply",
    "train_tokenizer",
    "wrap_tokenizer",
]


def load_tokenizer(name_or_path):
    """Load an existing tokenizer folder or Hub id as is (its vocabulary, special tokens and template untouched; a
    MiniMinds template saved before `RESPONSE_TEMPLATE` existed gets it, see `add_response_template`).

    The tokenizer never needs remote code, even from a model folder whose config carries an `auto_map`.
    """
    name = check_name_or_path(name_or_path, "tokenizer")
    tokenizer = from_pretrained_or_explain(AutoTokenizer, name, "tokenizer", trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path} has no eos_token; packing and generation need one")
    return add_response_template(tokenizer)
