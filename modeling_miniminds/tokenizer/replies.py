"""The one reader of generated replies: thinking, content and tool calls, streamed or whole.

Training, the terminal chat and the server all parse replies here. transformers' streaming `ResponseParser` (with
`RESPONSE_TEMPLATE`) is not used because it raises on a malformed <tool_call> block, losing the reply, and keeps
only the last piece of content that a tool call or think block splits; this parser keeps every character.
Parse only the generated text, decoded with `skip_special_tokens=True` (the tag tokens are not special and stay).
"""

import json
import uuid
from dataclasses import dataclass, field

from .chat_format import THINK_CLOSE, THINK_OPEN, TOOL_CLOSE, TOOL_OPEN


@dataclass
class Reply:
    """A parsed reply. `tool_calls` are OpenAI entries (id, type, function name and arguments as JSON text), as the
    server sends them; `message()` is the form the chat template and a tool runner take."""

    content: str = ""
    reasoning_content: str | None = None
    tool_calls: list[dict] = field(default_factory=list)

    def message(self) -> dict:
        """The assistant message as the chat template and a tool runner read it: arguments that are a JSON object
        come back as that object."""
        message = {"role": "assistant", "content": self.content}
        if self.reasoning_content is not None:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = [_with_object_arguments(call) for call in self.tool_calls]
        return message


def _with_object_arguments(call: dict) -> dict:
    try:
        arguments = json.loads(call["function"]["arguments"])
    except json.JSONDecodeError:
        return call
    if not isinstance(arguments, dict):
        return call
    return {**call, "function": {**call["function"], "arguments": arguments}}


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
