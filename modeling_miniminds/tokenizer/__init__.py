"""The MiniMinds tokenizer: special tokens with fixed ids, the ChatML chat template, byte-level BPE training and
loading of any existing tokenizer unchanged.

Special tokens get fixed ids: <|endoftext|>=0 (pad), <|im_start|>=1 (bos), <|im_end|>=2 (eos); the think and tool
tags follow as added tokens that are never split. The chat template wraps assistant content, including the closing
<|im_end|>, in {% generation %} markers so TRL's `assistant_only_loss=True` trains exactly those tokens.

`RESPONSE_TEMPLATE` tells `tokenizer.parse_response` how to read a generated reply back into a message (thinking,
`<tool_call>` JSON blocks, content): TRL's GRPO tool loop needs it and recognises only the templates of known models.
Tokenizers built here save it in `tokenizer_config.json`; `load_tokenizer` adds it to older folders with this template.
"""

import logging
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..cli.paths import check_name_or_path, from_pretrained_or_explain

logger = logging.getLogger(__name__)

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
TAG_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
BYTE_ALPHABET = 256

CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\nYou may call the functions whose JSON signatures are inside <tools></tools>:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nTo call one, reply with <tool_call>\\n' }}
    {{- '{"name": <name>, "arguments": <object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {%- if message.reasoning_content %}
                {{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}
            {%- endif %}
            {{- message.content or '' }}
            {%- if message.tool_calls %}
                {%- for tool_call in message.tool_calls %}
                    {%- set call = tool_call.function if tool_call.function else tool_call %}
                    {%- if message.content or not loop.first %}
                        {{- '\\n' }}
                    {%- endif %}
                    {{- '<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
                    {%- if call.arguments is string %}
                        {{- call.arguments }}
                    {%- else %}
                        {{- call.arguments | tojson }}
                    {%- endif %}
                    {{- '}\\n</tool_call>' }}
                {%- endfor %}
            {%- endif %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>tool\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""


# How a reply rendered by CHAT_TEMPLATE parses back (transformers' response-template format, version 1): an optional
# <think> block, then any number of <tool_call> JSON objects, and the text up to <|im_end|> as the content.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"},
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def add_response_template(tokenizer):
    """Let `tokenizer.parse_response` read replies of the MiniMinds chat template (tool calls included); a tokenizer
    with another template, or one that already has a response template, is returned unchanged."""
    if tokenizer.chat_template == CHAT_TEMPLATE and getattr(tokenizer, "response_template", None) is None:
        tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def build_bpe(vocab_size, min_frequency=2):
    """An untrained byte-level BPE tokenizer and its trainer, with the special tokens at ids 0..8."""
    reserved = BYTE_ALPHABET + len(SPECIAL_TOKENS) + len(TAG_TOKENS)
    if vocab_size <= reserved:
        raise ValueError(f"vocab_size must be larger than {reserved} (256 bytes + 9 special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS + TAG_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    return tokenizer, trainer


def wrap_tokenizer(tokenizer, model_max_length=32768):
    """Mark special vs. added tokens, attach the chat template and return a transformers fast tokenizer."""
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    for expected_id, token in enumerate(SPECIAL_TOKENS + TAG_TOKENS):
        actual = tokenizer.token_to_id(token)
        if actual != expected_id:
            raise RuntimeError(f"token {token} got id {actual}, expected {expected_id}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        response_template=RESPONSE_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


class _Counted:
    """Pass texts through while counting them, so an empty corpus is caught after the streaming pass."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.count = texts, 0

    def __iter__(self):
        for text in self.texts:
            self.count += 1
            yield text


def train_tokenizer(texts: Iterable[str], output_dir, vocab_size=6400, min_frequency=2, model_max_length=32768):
    """Train on a stream of texts, save to `output_dir` (loadable by AutoTokenizer without remote code), return it."""
    tokenizer, trainer = build_bpe(vocab_size, min_frequency)
    counted = _Counted(texts)
    tokenizer.train_from_iterator(counted, trainer=trainer)
    if counted.count == 0:
        raise ValueError("no text to train the tokenizer on: the input holds no non-empty document")
    if tokenizer.get_vocab_size() < vocab_size:
        logger.warning(
            "the corpus only supports %d tokens, fewer than vocab_size=%d; size the model by len(tokenizer)",
            tokenizer.get_vocab_size(),
            vocab_size,
        )
    hf_tokenizer = wrap_tokenizer(tokenizer, model_max_length)
    hf_tokenizer.save_pretrained(output_dir)
    logger.info("trained on %d documents; saved %d tokens to %s", counted.count, len(hf_tokenizer), output_dir)
    return hf_tokenizer


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
