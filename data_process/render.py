"""Render chat records as the text a model reads: each conversation through the tokenizer's chat template, one
`{"text"}` record per conversation, so that text recipes train on chats. The main use is distilling a draft model for
speculative decoding from a chat model on its own kind of conversations (`recipes/distill.py`); a draft distilled on
plain pretraining text agrees with the chat model far less often.

    python -m data_process.render --input data/synth/sft.jsonl --tokenizer runs/tokenizer --output chats.jsonl

Every input format that `data_process.chat` reads for SFT works (the project's, ShareGPT, OpenAI messages, ...),
tools and tool calls included. A record that is not a conversation stops the run naming its file and line, or goes to
`<output>.rejected.jsonl` with `--skip_bad`.
"""

from data_process.chat import row_tools, to_chat_row
from data_process.rejected import print_rejected
from data_process.transform import JsonlTransform, add_io_arguments
from modeling_miniminds.cli import FlagParser, command_main
from modeling_miniminds.tokenizer import load_tokenizer


def render_record(record, tokenizer) -> dict:
    """One chat record as `{"text"}`: its messages (and tools) through the chat template; ValueError if not a chat."""
    row = to_chat_row(record)
    return {"text": tokenizer.apply_chat_template(row["messages"], tools=row_tools(row), tokenize=False)}


def render_jsonl(inputs, output, tokenizer, skip_bad=False) -> tuple[int, int]:
    """Write the rendered text of every chat record in `inputs` to `output`; return (written, rejected)."""
    written = 0
    with JsonlTransform(inputs, output, skip_bad=skip_bad, desc="render") as job:
        for item in job.records():
            try:
                rendered = render_record(item.record, tokenizer)
            except ValueError as err:
                job.reject(item, err)
                continue
            job.write(rendered)
            written += 1
    return written, job.rejected


def make_parser():
    parser = add_io_arguments(FlagParser(description=__doc__), formats=False)
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or Hub id whose chat template renders")
    return parser


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    written, rejected = render_jsonl(args.input, args.output, load_tokenizer(args.tokenizer), args.skip_bad)
    print(f"wrote {written} conversations as text to {args.output}")
    print_rejected(rejected, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
