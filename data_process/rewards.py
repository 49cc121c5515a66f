"""Reward functions for RL on the project's `rl` format, usable directly as TRL GRPO/RLOO `reward_funcs`.

TRL calls `f(prompts=..., completions=..., completion_ids=..., **dataset_columns)`, so the `answer` column
arrives as a keyword. Completions are strings or, for conversational prompts, lists of messages whose
last entry is the assistant's reply. A reply states its final answer on a line `答案：X` / `Answer: X`
(what data_process.synth teaches); any thinking inside <think>...</think> is ignored.

The agent rewards score a whole tool-use trajectory (`data_process.trajectories`): `gt` (the share of a record's
`gt` values its final answer states), `valid_calls` (valid minus invalid calls over all calls, against the tools the
record declares in its `tools` column) and `unfinished` (-1 for a trajectory that never answers). Upstream MiniMind
sums the same three ideas into one clipped score; here they stay separate functions so each is logged under its
own name and weighted with `--reward_weights`.
"""

import datetime
import re
import unicodedata

from data_process.tool_schema import schemas_by_name
from data_process.trajectories import completion_messages, count_calls, finished, gt_hits

ANSWER_LINE = re.compile(r"(?:答案|最终答案|answer|final answer)\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
ZH_DATE = re.compile(r"^(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日$")
EN_DATE = re.compile(r"^([A-Za-z]+)\s+(\d{1,2}),?\s+(\d{4})$")
MONTHS = {datetime.date(2000, m, 1).strftime("%B").lower(): m for m in range(1, 13)}
TRAILING_PUNCT = "。．.！!？?，,；;：:\"'“”‘’「」 "


def completion_text(completion):
    """The reply text of one completion: a string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion.get("content") or ""
    if isinstance(completion, (list, tuple)) and completion:
        return completion_text(completion[-1])
    return ""


def strip_thinking(text):
    """Drop a leading <think>...</think> block (and anything before an unmatched </think>)."""
    text = THINK_BLOCK.sub("", text, count=1)
    return text.rsplit("</think>", 1)[-1]


def extract_answer(text):
    """The final answer: the last `答案：`/`Answer:` line, else the last number in the text, else None."""
    text = strip_thinking(text)
    lines = ANSWER_LINE.findall(text)
    if lines:
        return lines[-1]
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_date(text):
    match = ZH_DATE.match(text)
    try:
        if match:
            return datetime.date(*map(int, match.groups())).isoformat()
        match = EN_DATE.match(text)
        if match and match.group(1).lower() in MONTHS:
            month = MONTHS[match.group(1).lower()]
            return datetime.date(int(match.group(3)), month, int(match.group(2))).isoformat()
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        return None


def normalize_answer(text):
    """Canonical form for comparison: NFKC, case-folded, trimmed, thousands separators removed, dates as ISO."""
    text = unicodedata.normalize("NFKC", str(text)).strip().strip(TRAILING_PUNCT).casefold()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    return _as_date(text) or text


def answers_match(predicted, answer):
    """Numbers compare by value (8 == 8.0), dates by day, everything else by normalized text."""
    if predicted is None:
        return False
    left, right = normalize_answer(predicted), normalize_answer(answer)
    if NUMBER.fullmatch(left) and NUMBER.fullmatch(right):
        return abs(float(left) - float(right)) < 1e-6
    return left == right


def accuracy_reward(prompts=None, completions=None, answer=None, **kwargs):
    """1.0 when the completion's final answer equals the reference `answer`, else 0.0."""
    return [float(answers_match(extract_answer(completion_text(c)), a)) for c, a in zip(completions, answer)]


def format_reward(prompts=None, completions=None, **kwargs):
    """1.0 when the reply ends with exactly one answer line and any <think> block is closed, else 0.0."""
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        balanced = text.count("<think>") == text.count("</think>") <= 1
        body = strip_thinking(text).strip()
        last_line = body.rsplit("\n", 1)[-1]
        ok = balanced and len(ANSWER_LINE.findall(body)) == 1 and bool(ANSWER_LINE.fullmatch(last_line))
        rewards.append(float(ok))
    return rewards


def length_penalty(prompts=None, completions=None, max_chars=400, **kwargs):
    """0.0 up to `max_chars` characters, then down linearly to -1.0 at twice that: discourages rambling."""
    lengths = [len(completion_text(c)) for c in completions]
    return [-min(max(n - max_chars, 0) / max_chars, 1.0) for n in lengths]


def per_sample(column, count: int) -> list:
    """A reward column as one value per completion (None for every one when the dataset lacks it)."""
    return list(column) if column is not None else [None] * count


def gt_reward(prompts=None, completions=None, gt=None, answer=None, **kwargs):
    """The share of a record's `gt` values its final answer states (`trajectories.gt_hits`); a record without `gt`
    is checked against its `answer`; 0.0 for a trajectory that never answers."""
    rewards = []
    for completion, values, reference in zip(
        completions, per_sample(gt, len(completions)), per_sample(answer, len(completions))
    ):
        values = values if values is not None else [reference] if reference is not None else []
        hits = gt_hits(completion_messages(completion), values)
        rewards.append(sum(hits) / len(hits) if hits else None)
    return rewards


def valid_calls_reward(prompts=None, completions=None, tools=None, **kwargs):
    """(valid - invalid) / calls over a trajectory's tool calls, checked against the tools its record declares
    (`tools`: JSON text or a list of schemas): +1 when every call is valid, -1 when none is; 0.0 without calls, so a
    direct answer is judged by the other rewards alone."""
    rewards = []
    for completion, declared in zip(completions, per_sample(tools, len(completions))):
        valid, invalid = count_calls(completion_messages(completion), schemas_by_name(declared))
        rewards.append((valid - invalid) / (valid + invalid) if valid + invalid else 0.0)
    return rewards


def unfinished_penalty(prompts=None, completions=None, **kwargs):
    """-1.0 for a trajectory that never answers (it ends on a tool call or an open tag), else 0.0."""
    return [0.0 if finished(completion_messages(c)) else -1.0 for c in completions]


REWARD_FUNCTIONS = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "length": length_penalty,
    "gt": gt_reward,
    "valid_calls": valid_calls_reward,
    "unfinished": unfinished_penalty,
}


def get_reward_functions(names):
    """Reward functions by name (`accuracy`, `format`, `length`, `gt`, `valid_calls`, `unfinished`), e.g. from a
    recipe's YAML list."""
    unknown = [n for n in names if n not in REWARD_FUNCTIONS]
    if unknown:
        expected = ", ".join(REWARD_FUNCTIONS)
        raise ValueError(f"unknown reward function(s) {', '.join(unknown)}; expected from {expected}")
    return [REWARD_FUNCTIONS[n] for n in names]
