"""Streaming terminal chat with a saved model (a MiniMinds folder or its Qwen3 export).

    python -m modeling_miniminds.serving.chat runs/sft                                  # interactive; /reset, /exit
    python -m modeling_miniminds.serving.chat runs/sft --system "Answer briefly." --thinking --temperature 0.7
    python -m modeling_miniminds.serving.chat runs/sft-qwen3 --prompt "What is 2+3?"     # one reply, for scripts

A reply that opens with <think> streams its reasoning first (dimmed on a terminal); only the answer goes back into
the history, as Qwen3-style templates expect. When the conversation outgrows the model's context, the oldest turns
are dropped.
"""

import json
import sys

from ..cli import FlagParser, command_main
from ..tokenizer.chat_format import TOOL_CLOSE, TOOL_OPEN
from ..tokenizer.replies import Reply, ReplyStream
from .options import add_model_args, add_sampling_args, build_generator, sampling_params

DIM, RESET = "\033[2m", "\033[0m"


def parse_args(argv=None):
    parser = FlagParser(description=__doc__)
    parser.add_argument("model_dir", help="saved model folder (MiniMinds or a Qwen3 export) with its tokenizer")
    parser.add_argument("--prompt", help="answer this one prompt, print the reply and exit")
    parser.add_argument("--system", help="system prompt")
    # Neither flag renders the prompt as SFT rendered its chats (no `enable_thinking`): the reply the report shows.
    thinking = parser.add_mutually_exclusive_group()
    thinking.add_argument(
        "--thinking", action="store_const", const=True, help="ask the model to think first (enable_thinking=True)"
    )
    thinking.add_argument(
        "--no_thinking",
        dest="thinking",
        action="store_const",
        const=False,
        help="open the reply with an empty think block (enable_thinking=False, as Qwen3 does)",
    )
    add_sampling_args(parser)
    add_model_args(parser)
    return parser.parse_args(argv)


class Chat:
    """A conversation: history, the system prompt and the sampling settings; `reply` streams one answer."""

    def __init__(self, generator, params, system: str | None = None, thinking: bool | None = None, out=sys.stdout):
        self.generator, self.params, self.system, self.thinking, self.out = generator, params, system, thinking, out
        self.color = out.isatty()
        self.history: list[dict] = []

    def reset(self):
        self.history = []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def prompt_ids(self) -> list[int]:
        """The rendered conversation, without its oldest turns when it would not leave room for a reply."""
        room = (self.generator.max_length or 1 << 62) - self.params.max_new_tokens
        while True:
            flags = {} if self.thinking is None else {"enable_thinking": self.thinking}
            ids = self.generator.chat_prompt(self.messages(), **flags)
            if len(ids) <= room or len(self.history) <= 1:
                return ids
            self.history = self.history[2:] if len(self.history) > 2 else self.history[1:]

    def reply(self, text: str) -> Reply:
        self.history.append({"role": "user", "content": text})
        stream, answer, last = ReplyStream(), [], None
        for deltas in self.generator.stream([self.prompt_ids()], self.params):
            for kind, value in stream.feed(deltas[0].text):
                last = self._show(kind, value, last)
                answer += [value] if kind == "content" else []
        for kind, value in stream.finish():
            last = self._show(kind, value, last)
            answer += [value] if kind == "content" else []
        self.out.write(RESET + "\n" if self.color and last == "reasoning" else "\n")
        self.out.flush()
        content = "".join(answer).strip()
        self.history.append({"role": "assistant", "content": content})
        return Reply(content=content)

    def _show(self, kind: str, value, last: str | None) -> str:
        """Write one event: reasoning dimmed on a terminal and set off from the answer by a line break."""
        if kind == "tool_call":
            value, kind = f"{TOOL_OPEN}{json.dumps(value['function'], ensure_ascii=False)}{TOOL_CLOSE}", "content"
        if kind != last and last == "reasoning":
            value = (RESET if self.color else "") + "\n" + value
        elif kind != last and kind == "reasoning" and self.color:
            value = DIM + value
        self.out.write(value)
        self.out.flush()
        return kind


def interact(chat: Chat, lines=sys.stdin):
    """Read user turns until /exit or end of input; /reset starts a new conversation."""
    print("Type a message; /reset starts over, /exit quits.", flush=True)
    while True:
        print("you> ", end="", flush=True)
        line = lines.readline()
        if not line:
            print()
            return
        text = line.strip()
        if text == "/exit":
            return
        if text == "/reset":
            chat.reset()
            print("(history cleared)", flush=True)
        elif text:
            print("model> ", end="", flush=True)
            chat.reply(text)


@command_main
def main(argv=None) -> int:
    args = parse_args(argv)
    chat = Chat(build_generator(args), sampling_params(args), args.system, args.thinking)
    if args.prompt is not None:
        chat.reply(args.prompt)
    else:
        interact(chat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
