"""Streaming terminal chat with a saved model (a MiniMinds folder or its Qwen3 export), and the parsing of replies
into thinking, content and tool calls that the server shares.

    python -m modeling_miniminds.serving.chat runs/sft                                  # interactive; /reset, /exit
    python -m modeling_miniminds.serving.chat runs/sft --system "Answer briefly." --thinking --temperature 0.7
    python -m modeling_miniminds.serving.chat runs/sft-qwen3 --prompt "What is 2+3?"     # one reply, for scripts

A reply that opens with <think> streams its reasoning first (dimmed on a terminal); only the answer goes back into
the history, as Qwen3-style templates expect. When the conversation outgrows the model's context, the oldest turns
are dropped.
"""

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field

import torch

from ..inference import Generator, SamplingParams, load_for_decoding

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
DIM, RESET = "\033[2m", "\033[0m"


@dataclass
class Reply:
    content: str = ""
    reasoning_content: str | None = None
    tool_calls: list[dict] = field(default_factory=list)


def parse_tool_call(block: str) -> dict | None:
    """An OpenAI `tool_calls` entry from the JSON inside <tool_call></tool_call>, or None if it is not one."""
    try:
        call = json.loads(block)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def _partial_tag(text: str, tags) -> int:
    """Length of the longest end of `text` that is the start of one of `tags` (it may become the tag)."""
    return max((n for tag in tags for n in range(1, len(tag)) if text.endswith(tag[:n])), default=0)


class ReplyStream:
    """Splits streamed reply text into ("reasoning", text), ("content", text) and ("tool_call", dict) events.

    Reasoning is what a reply opens with between <think> and </think> (the newlines the template puts inside the tags
    are dropped). A complete <tool_call> block whose JSON names a function becomes a tool call; anything else stays
    content, so no text is lost. Text that may be the start of a tag is held back until the next delta decides it.
    """

    def __init__(self):
        self.state = "start"  # start -> think_open -> think -> after_think -> content <-> tool
        self.buffer = ""

    def feed(self, text: str) -> list[tuple[str, object]]:
        self.buffer += text
        events = []
        while True:
            before = (self.state, len(self.buffer))
            events += getattr(self, f"_{self.state}")()
            if (self.state, len(self.buffer)) == before:
                return [event for event in events if event[1]]

    def finish(self) -> list[tuple[str, object]]:
        """Everything still held back, once the reply has ended."""
        kind = "reasoning" if self.state.startswith("think") else "content"
        text, self.buffer = self.buffer, ""
        if kind == "reasoning":
            text = text.removeprefix("\n") if self.state == "think_open" else text.removesuffix("\n")
        return [(kind, text)] if text else []

    def _start(self):
        stripped = self.buffer.lstrip()
        if stripped.startswith(THINK_OPEN):
            self.state, self.buffer = "think_open", stripped[len(THINK_OPEN) :]
        elif not stripped or THINK_OPEN.startswith(stripped):
            return []
        else:
            self.state = "content"
        return []

    def _think_open(self):
        if self.buffer:
            self.state, self.buffer = "think", self.buffer.removeprefix("\n")
        return []

    def _think(self):
        end = self.buffer.find(THINK_CLOSE)
        if end >= 0:
            text, self.buffer = self.buffer[:end].removesuffix("\n"), self.buffer[end + len(THINK_CLOSE) :]
            self.state = "after_think"
            return [("reasoning", text)]
        held = _partial_tag(self.buffer, [THINK_CLOSE])
        held += self.buffer[: len(self.buffer) - held].endswith("\n")  # the newline the template puts before the tag
        text, self.buffer = self.buffer[: len(self.buffer) - held], self.buffer[len(self.buffer) - held :]
        return [("reasoning", text)]

    def _after_think(self):
        self.buffer = self.buffer.lstrip("\n")
        if self.buffer:
            self.state = "content"
        return []

    def _content(self):
        start = self.buffer.find(TOOL_OPEN)
        if start >= 0:
            text, self.buffer = self.buffer[:start], self.buffer[start:]
            self.state = "tool"
            return [("content", text)]
        held = _partial_tag(self.buffer, [TOOL_OPEN])
        text, self.buffer = self.buffer[: len(self.buffer) - held], self.buffer[len(self.buffer) - held :]
        return [("content", text)]

    def _tool(self):
        end = self.buffer.find(TOOL_CLOSE)
        if end < 0:
            return []
        block, self.buffer = self.buffer[: end + len(TOOL_CLOSE)], self.buffer[end + len(TOOL_CLOSE) :]
        self.state = "content"
        call = parse_tool_call(block[len(TOOL_OPEN) : -len(TOOL_CLOSE)])
        return [("tool_call", call)] if call else [("content", block)]


def parse_reply(text: str) -> Reply:
    """A whole reply split as `ReplyStream` splits it; content is stripped of surrounding whitespace."""
    stream = ReplyStream()
    reply, reasoning, content = Reply(), [], []
    for kind, value in stream.feed(text) + stream.finish():
        if kind == "tool_call":
            reply.tool_calls.append(value)
        else:
            (reasoning if kind == "reasoning" else content).append(value)
    reply.content = "".join(content).strip()
    reply.reasoning_content = "".join(reasoning) or None
    return reply


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="saved model folder (MiniMinds or a Qwen3 export) with its tokenizer")
    parser.add_argument("--prompt", help="answer this one prompt, print the reply and exit")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--thinking", action="store_true", help="let the model think first (enable_thinking=True)")
    add_sampling_args(parser)
    add_model_args(parser)
    return parser.parse_args(argv)


def add_sampling_args(parser):
    group = parser.add_argument_group("sampling")
    group.add_argument("--max_new_tokens", type=int, default=512, help="default: 512")
    group.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default: 0.7)")
    group.add_argument("--top_p", type=float, default=0.9, help="nucleus size, 1 is off (default: 0.9)")
    group.add_argument("--top_k", type=int, default=0, help="0 is off (default: 0)")
    group.add_argument("--repetition_penalty", type=float, default=1.0, help="1 is off (default: 1.0)")
    group.add_argument("--stop", action="append", default=[], help="stop string; repeat the flag for several")
    group.add_argument("--seed", type=int, default=None, help="sampling seed (default: none)")


def add_model_args(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    group.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    group.add_argument(
        "--compile",
        action="store_true",
        help="static cache + torch.compile of the decoding step (faster after a slow warm-up)",
    )
    group.add_argument(
        "--draft_model",
        default=None,
        help="speculative decoding with this small model of the same tokenizer (a distilled student) drafting "
        "--draft_tokens at a time whenever a single request decodes; the output is unchanged",
    )
    group.add_argument("--draft_tokens", type=int, default=4, help="tokens per draft of --draft_model (default: 4)")
    group.add_argument(
        "--prompt_lookup",
        type=int,
        default=0,
        metavar="N",
        help="speculative decoding by prompt lookup: up to N draft tokens copied from earlier in the conversation; "
        "pays where replies quote it (default: 0, off)",
    )
    group.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run the modeling code saved in the folder instead of the installed MiniMinds classes",
    )


def sampling_params(args) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        seed=args.seed,
    )


def build_generator(args) -> Generator:
    """The model, tokenizer and Generator the model flags ask for."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_for_decoding(args.model_dir, args.device, args.dtype, args.trust_remote_code)
    draft = None
    if args.draft_model:
        draft, _ = load_for_decoding(
            args.draft_model, str(model.device), args.dtype, args.trust_remote_code, what="--draft_model"
        )
    return Generator(
        model,
        tokenizer,
        compile=args.compile,
        prompt_lookup=args.prompt_lookup,
        draft_model=draft,
        draft_tokens=args.draft_tokens,
    )


class Chat:
    """A conversation: history, the system prompt and the sampling settings; `reply` streams one answer."""

    def __init__(self, generator, params, system: str | None = None, thinking: bool = False, out=sys.stdout):
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
            ids = self.generator.chat_prompt(self.messages(), enable_thinking=self.thinking)
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


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        chat = Chat(build_generator(args), sampling_params(args), args.system, args.thinking)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.prompt is not None:
        chat.reply(args.prompt)
    else:
        interact(chat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
