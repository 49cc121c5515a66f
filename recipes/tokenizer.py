"""Train a byte-level BPE tokenizer with a ChatML chat template, or load an existing one unchanged.

    python recipes/tokenizer.py --dataset_name data/synth --output_dir runs/tokenizer --vocab_size 6400

Special tokens get fixed ids: <|endoftext|>=0 (pad), <|im_start|>=1 (bos), <|im_end|>=2 (eos); the think and
tool tags follow as added tokens that are never split. The chat template wraps assistant content, including
the closing <|im_end|>, in {% generation %} markers so TRL's `assistant_only_loss=True` trains exactly those
tokens. After training, compression (UTF-8 bytes and characters per token, per language) is printed for a
held-out file.
"""

import logging
from collections import defaultdict
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data_process.io import build_parser, expand_inputs, read_jsonl, record_text

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


def iter_texts(files, max_docs=None):
    """Stream the text of every record (any project format) or, for .txt files, every non-empty line."""
    count = 0
    for path in files:
        if path.suffix == ".txt":
            with open(path, encoding="utf-8") as handle:
                texts = (line.rstrip("\n") for line in handle if line.strip())
                for text in texts:
                    yield text
                    count += 1
                    if max_docs and count >= max_docs:
                        return
            continue
        for record in read_jsonl(path, validate="auto"):
            yield record_text(record)
            count += 1
            if max_docs and count >= max_docs:
                return


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
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    files,
    output_dir,
    vocab_size=6400,
    min_frequency=2,
    max_docs=None,
    eval_file=None,
    model_max_length=32768,
):
    """Train on JSONL/.txt files or folders, save to `output_dir` (loadable by AutoTokenizer) and return it."""
    paths = expand_inputs(files, suffixes=(".jsonl", ".txt"))
    tokenizer, trainer = build_bpe(vocab_size, min_frequency)
    tokenizer.train_from_iterator(iter_texts(paths, max_docs), trainer=trainer)
    if tokenizer.get_vocab_size() < vocab_size:
        logger.warning(
            "the corpus only supports %d tokens, fewer than vocab_size=%d; size the model by len(tokenizer)",
            tokenizer.get_vocab_size(),
            vocab_size,
        )
    hf_tokenizer = wrap_tokenizer(tokenizer, model_max_length)
    hf_tokenizer.save_pretrained(output_dir)
    logger.info("saved tokenizer with %d tokens to %s", len(hf_tokenizer), output_dir)
    if eval_file is not None:
        print_compression(compression_stats(hf_tokenizer, iter_texts([Path(eval_file)])), eval_file)
    return hf_tokenizer


def load_tokenizer(name_or_path):
    """Load an existing tokenizer folder or Hub id as is (its vocabulary, special tokens and template untouched)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        if Path(name_or_path).expanduser().exists():
            raise
        raise FileNotFoundError(f"Tokenizer {name_or_path}: no such folder, and not loadable as a Hub id ({err}).") from err
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path} has no eos_token; packing and generation need one")
    return tokenizer


def text_language(text):
    """`zh` when at least a fifth of the letters are CJK ideographs, else `en`."""
    letters = [ch for ch in text if ch.isalpha()]
    cjk = sum("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in letters)
    return "zh" if letters and cjk / len(letters) >= 0.2 else "en"


def compression_stats(tokenizer, texts):
    """Per language: documents, UTF-8 bytes per token and characters per token (higher is better)."""
    totals = defaultdict(lambda: {"docs": 0, "bytes": 0, "chars": 0, "tokens": 0})
    for text in texts:
        entry = totals[text_language(text)]
        entry["docs"] += 1
        entry["bytes"] += len(text.encode("utf-8"))
        entry["chars"] += len(text)
        entry["tokens"] += len(tokenizer.encode(text, add_special_tokens=False))
    return {
        lang: {
            "docs": t["docs"],
            "bytes_per_token": t["bytes"] / max(t["tokens"], 1),
            "chars_per_token": t["chars"] / max(t["tokens"], 1),
        }
        for lang, t in sorted(totals.items())
    }


def print_compression(stats, source):
    print(f"compression on {source}:")
    print(f"  {'lang':<6}{'docs':>8}{'bytes/token':>14}{'chars/token':>14}")
    for lang, s in stats.items():
        print(f"  {lang:<6}{s['docs']:>8}{s['bytes_per_token']:>14.2f}{s['chars_per_token']:>14.2f}")


def default_eval_file(dataset_name):
    """A corpus written by data_process.synth keeps held-out text in eval/: eval/pretrain.jsonl for a
    folder, eval/<name> for a file."""
    for entry in map(Path, dataset_name):
        candidate = entry / "eval" / "pretrain.jsonl" if entry.is_dir() else entry.parent / "eval" / entry.name
        if candidate.is_file():
            return candidate
    logger.info("no held-out file found next to %s; pass --eval_file for a compression report", dataset_name)
    return None


def make_parser():
    parser = build_parser(__doc__)
    parser.add_argument("--dataset_name", nargs="+", required=True, help="JSONL/.txt files or folders to train on")
    parser.add_argument("--output_dir", required=True, help="folder to save the tokenizer to")
    parser.add_argument("--vocab_size", type=int, default=6400, help="vocabulary size including the 9 special tokens")
    parser.add_argument("--min_frequency", type=int, default=2, help="minimum count for a merge")
    parser.add_argument(
        "--max_docs", type=int, default=None, help="stop reading after this many documents; None reads them all"
    )
    parser.add_argument(
        "--eval_file",
        default=None,
        help="held-out JSONL for the compression report; None looks for eval/pretrain.jsonl in a dataset folder "
        "or eval/<file name> next to a dataset file",
    )
    parser.add_argument("--model_max_length", type=int, default=32768, help="max sequence length stored in the config")
    return parser


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    train_tokenizer(
        args.dataset_name,
        args.output_dir,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        max_docs=args.max_docs,
        eval_file=args.eval_file or default_eval_file(args.dataset_name),
        model_max_length=args.model_max_length,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
