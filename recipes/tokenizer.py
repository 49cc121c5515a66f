"""Train a byte-level BPE tokenizer with the MiniMinds ChatML chat template.

    python recipes/tokenizer.py --dataset_name data/synth --output_dir runs/tokenizer --vocab_size 6400

Reads JSONL in any project format (every text field of every record) or .txt files (one document per non-empty
line). A conversation is read as the chat template lays it out, role headers, tool lists and tool calls included, so
the markup the model reads costs few tokens. Special tokens get fixed ids (<|endoftext|>=0 pad, <|im_start|>=1 bos, <|im_end|>=2 eos) and the think and
tool tags follow as unsplittable added tokens; see `modeling_miniminds.tokenizer`. After training, compression
(UTF-8 bytes and characters per token, per language) is printed for a held-out file.
"""

import logging
from pathlib import Path

from data_process.loading import iter_texts
from data_process.text import compression_stats
from modeling_miniminds.cli import FlagParser, command_main
from modeling_miniminds.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)


def print_compression(stats: dict, source) -> None:
    print(f"compression on {source}:")
    print(f"  {'lang':<6}{'docs':>8}{'bytes/token':>14}{'chars/token':>14}")
    for lang, s in stats.items():
        print(f"  {lang:<6}{s['docs']:>8}{s['bytes_per_token']:>14.2f}{s['chars_per_token']:>14.2f}")


def default_eval_file(dataset_name: list[str]) -> Path | None:
    """A corpus written by data_process.synth keeps held-out text in eval/: eval/pretrain.jsonl for a
    folder, eval/<name> for a file."""
    for entry in map(Path, dataset_name):
        candidate = entry / "eval" / "pretrain.jsonl" if entry.is_dir() else entry.parent / "eval" / entry.name
        if candidate.is_file():
            return candidate
    logger.info("no held-out file found next to %s; pass --eval_file for a compression report", dataset_name)
    return None


def make_parser():
    parser = FlagParser(description=__doc__)
    parser.add_argument("--dataset_name", nargs="+", required=True, help="JSONL/.txt files, folders or globs")
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


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    tokenizer = train_tokenizer(
        iter_texts(args.dataset_name, args.max_docs, render_chats=True),
        args.output_dir,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        model_max_length=args.model_max_length,
    )
    eval_file = args.eval_file or default_eval_file(args.dataset_name)
    if eval_file is not None:
        print_compression(compression_stats(tokenizer, iter_texts([eval_file])), eval_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
