"""Reading a tool-use trajectory (the messages a policy added to a prompt: assistant turns, their tool calls, the
tool messages), the same way for the agent rewards and the held-out agent metrics.

A call counts as valid when its name is declared and its arguments fit the declared schema
(`data_process.tool_schema`). A `<tool_call>` left in an assistant's text is a call that could not be parsed (TRL's
tool loop and `parse_reply` both leave a malformed block as text), so it was never run and counts as invalid. A
trajectory finishes when its last message is an assistant turn that calls nothing and leaves no tag open; one that
ends on a call (the tool rounds ran out, or the tool result did not fit in the completion) never answered.

A `gt` value is found in the final answer when, for a number, some number in the text is within a relative
tolerance of it (tool results carry more digits than an answer repeats: 3.1069 miles answered as 3.11), and for
anything else, when its normalised text (NFKC, case-folded, whitespace collapsed) occurs in the answer's.
"""

import re
import unicodedata

from data_process.tool_schema import call_errors

TOOL_OPEN, TOOL_CLOSE, THINK_OPEN, THINK_CLOSE = "<tool_call>", "</tool_call>", "<think>", "</think>"
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\d])")
PLAIN_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
REL_TOL = 0.01


def completion_messages(completion) -> list[dict]:
    """A completion as messages: TRL gives conversational completions as lists, plain ones as text."""
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    if isinstance(completion, dict):
        return [completion]
    return list(completion or [])


def assistant_turns(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m.get("role", "assistant") == "assistant"]


def count_calls(messages: list[dict], declared: dict[str, dict]) -> tuple[int, int]:
    """(valid, invalid) tool calls of a trajectory against the declared tools (`tool_schema.schemas_by_name`)."""
    valid = invalid = 0
    for message in assistant_turns(messages):
        for call in message.get("tool_calls") or []:
            if call_errors(call, declared):
                invalid += 1
            else:
                valid += 1
        invalid += (message.get("content") or "").count(TOOL_OPEN)
    return valid, invalid


def finished(messages: list[dict]) -> bool:
    """Whether the trajectory ends with an answer: a last assistant turn with no call and no open tag."""
    if not messages or messages[-1].get("role", "assistant") != "assistant" or messages[-1].get("tool_calls"):
        return False
    text = messages[-1].get("content") or ""
    return TOOL_OPEN not in text and text.count(THINK_OPEN) <= text.count(THINK_CLOSE) and bool(answer_text(text))


def answer_text(text: str) -> str:
    """The text of a reply after any thinking block."""
    return text.rsplit(THINK_CLOSE, 1)[-1].strip()


def final_answer(messages: list[dict]) -> str | None:
    """The final answer of a finished trajectory, None for one that never finishes."""
    return answer_text(messages[-1].get("content") or "") if finished(messages) else None


def normalise(text) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def numbers_in(text: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(THOUSANDS.sub("", unicodedata.normalize("NFKC", text)))]


def close(a: float, b: float, rel_tol: float = REL_TOL) -> bool:
    return abs(a - b) <= max(rel_tol * max(abs(a), abs(b)), 1e-9)


def gt_found(answer: str, value, rel_tol: float = REL_TOL) -> bool:
    """Whether one `gt` value is stated in `answer` (numbers by value within `rel_tol`, other values as text)."""
    target = normalise(value).strip(" .。")
    if not target:
        return False
    if PLAIN_NUMBER.fullmatch(THOUSANDS.sub("", target)):
        return any(close(n, float(THOUSANDS.sub("", target)), rel_tol) for n in numbers_in(answer))
    return target in normalise(answer)


def gt_hits(messages: list[dict], gt: list, rel_tol: float = REL_TOL) -> list[bool]:
    """For each `gt` value, whether the trajectory's final answer states it (all False when it never finishes)."""
    answer = final_answer(messages)
    return [answer is not None and gt_found(answer, value, rel_tol) for value in gt]
