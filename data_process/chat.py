"""Chat data for supervised fine-tuning: any supported format in, checked conversations out, as the columns TRL's
SFTTrainer renders through the chat template.

A record may be in the project's SFT format (`{"messages": [...], "tools": [...]}`, the built-in corpus's, or with
the turns under `conversations`), upstream MiniMind's (the tool list as JSON text in a system message's `tools`,
`tool_calls` as JSON text), ShareGPT (`from`/`value`), Alpaca or OpenAI `messages`; data_process.convert recognises
and converts each. Every record becomes one row:

    {"messages": [{"role", "content", "reasoning_content", "tool_calls"}, ...], "tools": JSON text or None}

`tool_calls` are `{"type": "function", "function": {"name", "arguments": JSON text}}` (the template writes string
arguments as they are), and `<think>...</think>` written inline at the start of a reply moves to
`reasoning_content`, which the template renders back as a think block.

Beyond each format's own validation, a conversation must keep its turns in order: an optional system message
first, then a user turn, the assistant answering it, tool results right after the assistant call they answer, and
an assistant turn last; a tool call must name its function and give JSON-object arguments. A bad record raises
DataError naming `file:line` and the field or, with `skip_bad`, is counted and written to a rejected file like in
every data tool.
"""

import json
import logging
import random
import re
from pathlib import Path

import datasets
import numpy as np
from transformers.utils.chat_template_utils import render_jinja_template

from data_process.convert import convert_record
from data_process.jsonl import iter_lines, parse_line
from data_process.records import DataError, data_error_in, turns_field
from data_process.rejected import RejectedWriter, rejected_path_for
from data_process.sources import resolve_source
from modeling_miniminds.tokenizer.chat_format import CHAT_TEMPLATE, SPECIAL_TOKENS, TAG_TOKENS

logger = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_FEATURES = {
    "type": datasets.Value("string"),
    "function": {"name": datasets.Value("string"), "arguments": datasets.Value("string")},
}
MESSAGE_FEATURES = {
    "role": datasets.Value("string"),
    "content": datasets.Value("string"),
    "reasoning_content": datasets.Value("string"),
    "tool_calls": [TOOL_CALL_FEATURES],
}
# `rejected` carries a bad line (JSON text) through the dataset cache, so a cached load reports its skips too.
ROW_FEATURES = datasets.Features(
    {"messages": [MESSAGE_FEATURES], "tools": datasets.Value("string"), "rejected": datasets.Value("string")}
)


def _json_value(value, field):
    """JSON text decoded (other values as they are); empty text is no value."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"field '{field}': not valid JSON ({err.msg} at column {err.colno})") from None


def _turns_field(record):
    """The record's turns field; for a layout without one (Alpaca, ...) `conversations`, what convert writes."""
    return turns_field(record) or "conversations"


def _decode_tool_calls(record):
    """Upstream MiniMind writes `tool_calls` as JSON text; decode it so format validation sees a list."""
    field = _turns_field(record)
    turns = record.get(field)
    if not isinstance(turns, list):
        return record
    decoded = []
    for i, turn in enumerate(turns):
        if isinstance(turn, dict) and isinstance(turn.get("tool_calls"), str):
            turn = {**turn, "tool_calls": _json_value(turn["tool_calls"], f"{field}[{i}].tool_calls")}
        decoded.append(turn)
    return {**record, field: decoded}


def record_tools(record) -> list[dict] | None:
    """The tool list of a record: its `tools` field, else (upstream MiniMind) a system message's `tools`; a list or
    JSON text of one. Each tool must name its function."""
    field, tools = "tools", record.get("tools")
    if not tools:
        turns = record.get(_turns_field(record))
        for i, turn in enumerate(turns if isinstance(turns, list) else []):
            if isinstance(turn, dict) and turn.get("role") == "system" and turn.get("tools"):
                field, tools = f"{_turns_field(record)}[{i}].tools", turn["tools"]
                break
    tools = _json_value(tools, field)
    if not tools:
        return None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise ValueError(f"field '{field}': expected a list of tool definitions, got {type(tools).__name__}")
    for j, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"field '{field}[{j}]': expected a tool definition with a function name")
    return tools


def normalize_tool_call(call, where) -> dict:
    """`{"type": "function", "function": {"name", "arguments": JSON text}}` from the OpenAI form or a flat
    `{"name", "arguments"}`; arguments must be a JSON object (or JSON text of one)."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ValueError(f"field '{where}': expected a tool call with a function name")
    arguments = _json_value(function.get("arguments"), f"{where}.function.arguments")
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, dict):
        got = type(arguments).__name__
        raise ValueError(f"field '{where}.function.arguments': expected a JSON object, got {got}")
    # json.dumps writes what the template's `tojson` would: tool calls read the same in training and in generation
    arguments = json.dumps(arguments, ensure_ascii=False)
    return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}


def check_turn_order(messages, field="conversations") -> None:
    """Optional system first; user, then assistant; tool results right after the assistant call they answer; the
    assistant last. Raises ValueError naming the first turn out of place."""
    previous = None
    for i, message in enumerate(messages):
        role, where = message["role"], f"{field}[{i}].role"
        calls_pending = previous == "assistant" and bool(messages[i - 1].get("tool_calls"))
        if calls_pending and role != "tool":
            raise ValueError(f"field '{field}[{i - 1}].tool_calls': the tool call gets no tool result")
        if role == "system" and i > 0:
            raise ValueError(f"field '{where}': a system message may only come first")
        if role == "user" and previous not in (None, "system", "assistant"):
            raise ValueError(f"field '{where}': 'user' cannot follow '{previous}'; the assistant answers first")
        if role == "assistant" and previous not in ("user", "tool"):
            after = f"follow '{previous}'" if previous else "come first"
            raise ValueError(f"field '{where}': 'assistant' cannot {after}; it answers a user or tool turn")
        if role == "tool" and not (calls_pending or previous == "tool"):
            raise ValueError(f"field '{where}': a tool result must follow an assistant tool call")
        previous = role
    if previous != "assistant":
        raise ValueError(f"field '{field}': must end with an assistant turn, ends with '{previous}'")


def _split_inline_thinking(content):
    """("reasoning", "reply") from a reply that opens with <think>...</think>, else (None, content)."""
    stripped = content.lstrip()
    if not stripped.startswith(THINK_OPEN) or THINK_CLOSE not in stripped:
        return None, content
    thinking, _, reply = stripped[len(THINK_OPEN) :].partition(THINK_CLOSE)
    return thinking.strip("\n"), reply.lstrip("\n")


def _normalize_message(message, source, where):
    """The row form of one converted message; `source` is the record's own message, for fields convert drops."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or (source or {}).get("reasoning_content")
    if message["role"] == "assistant" and not reasoning:
        reasoning, content = _split_inline_thinking(content)
    calls = message.get("tool_calls") or []
    calls = [normalize_tool_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
    return {
        "role": message["role"],
        "content": content,
        "reasoning_content": reasoning or None,
        "tool_calls": calls or None,
    }


def to_chat_row(record) -> dict:
    """One source record of any supported format as `{"messages", "tools"}`; ValueError naming the field if bad."""
    record = _decode_tool_calls(record)
    tools = record_tools(record)
    _, converted = convert_record(record, target="sft")
    field = _turns_field(record)
    sources = record[field] if field == "messages" else [None] * len(converted["conversations"])
    messages = [
        _normalize_message(message, source, f"{field}[{i}]")
        for i, (message, source) in enumerate(zip(converted["conversations"], sources))
    ]
    if messages and messages[0]["role"] == "system" and not messages[0]["content"].strip():
        messages = messages[1:]  # a system turn that held only the tool list (upstream MiniMind's layout)
    check_turn_order(messages, field)
    return {"messages": messages, "tools": json.dumps(tools, ensure_ascii=False) if tools else None}


def row_tools(row: dict) -> list[dict] | None:
    """A chat row's tool list, decoded from the JSON text `to_chat_row` keeps it as (one column type for datasets)."""
    return json.loads(row["tools"]) if row.get("tools") else None


# A tokenizer adds the special and tag tokens whole, so BPE need not learn them from their pieces.
_ADDED_TOKENS = re.compile("|".join(map(re.escape, SPECIAL_TOKENS + TAG_TOKENS)))


def template_text(record) -> str:
    """One chat record as the project's chat template lays it out for the model (role headers, the tool list, tool
    calls as JSON), less the added tokens: the text a tokenizer should learn from. One trained on the messages'
    words alone spent 458 tokens on a demo calculator prompt, against 220."""
    row = to_chat_row(record)
    rendered, _ = render_jinja_template([row["messages"]], tools=row_tools(row), chat_template=CHAT_TEMPLATE)
    return _ADDED_TOKENS.sub("\n", rendered[0])


def read_system_prompts(values) -> list[str]:
    """System prompts from `--system_prompts`: the prompts themselves, or one file (.json: a list; else one per
    line)."""
    if not values:
        return []
    values = [values] if isinstance(values, str) else list(values)
    source = values[0]
    if len(values) == 1 and Path(source).is_file():
        text = Path(source).read_text(encoding="utf-8")
        try:
            values = json.loads(text) if source.endswith(".json") else text.splitlines()
        except json.JSONDecodeError as err:
            raise ValueError(f"--system_prompts {source}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(values, list) or not all(isinstance(p, str) for p in values):
            raise ValueError(f"--system_prompts {source}: expected a JSON list of strings")
    prompts = [p.strip() for p in values if p.strip()]
    if not prompts:
        raise ValueError(f"--system_prompts {source}: no prompt given")
    return prompts


def add_system_prompt(row, prompts, ratio, rng) -> dict:
    """As upstream MiniMind does: with probability `ratio`, a conversation with no system message and no tools gets
    one of `prompts`, so the model answers alike with and without one."""
    if not prompts or row["tools"] or row["messages"][0]["role"] == "system" or rng.random() >= ratio:
        return row
    system = {"role": "system", "content": rng.choice(prompts), "reasoning_content": None, "tool_calls": None}
    return {**row, "messages": [system, *row["messages"]]}


def _row(record, where, augment):
    """The dataset row of one record, or (raises) its error naming `where` (`file:line`)."""
    try:
        row = to_chat_row(record)
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    return {**augment(row, where), "rejected": None}


def _rejected_row(err, path, line, raw):
    reason = str(err).partition(f":{line}: ")[2]
    rejected = {"file": str(path), "line": line, "reason": reason or str(err), "raw": raw}
    return {"messages": [], "tools": None, "rejected": json.dumps(rejected, ensure_ascii=False)}


def _jsonl_rows(stamps, skip_bad, system_prompts, ratio, seed):
    """Rows of local JSONL files. The stamps (path, size, mtime) are there for the cache key only."""
    augment = _augmenter(system_prompts, ratio, seed)
    for path, *_ in stamps:
        for line, _, raw in iter_lines(path):
            if not raw.strip():
                continue
            try:
                yield _row(parse_line(path, line, raw), f"{path}:{line}", augment)
            except DataError as err:
                if not skip_bad:
                    raise
                yield _rejected_row(err, path, line, raw.decode("utf-8", errors="replace"))


def _augmenter(system_prompts, ratio, seed):
    """Adds system prompts with a random stream per record (seed, file name and line), so the result depends neither
    on the order or the number of processes that build the dataset, nor on the folder the file sits in."""
    if not system_prompts:
        return lambda row, where: row

    def augment(row, where):
        file, line = where.rsplit(":", 1)
        return add_system_prompt(row, system_prompts, ratio, random.Random(f"{seed}:{Path(file).name}:{line}"))

    return augment


def _table_rows(dataset, name, skip_bad, system_prompts, ratio, seed):
    """Rows of parquet files or a Hub dataset, converted the same way; errors name `name:row`."""
    augment = _augmenter(system_prompts, ratio, seed)

    def convert(record, index):
        try:
            return _row(record, f"{name}:{index + 1}", augment)
        except DataError as err:
            if not skip_bad:
                raise
            return _rejected_row(err, name, index + 1, json.dumps(record, ensure_ascii=False, default=str))

    return dataset.map(
        convert,
        with_indices=True,
        features=ROW_FEATURES,
        remove_columns=dataset.column_names,
        desc=f"convert {Path(name).name}",
    )


def _load_rows(name, split, skip_bad, system_prompts, ratio, seed):
    options = {"skip_bad": skip_bad, "system_prompts": system_prompts, "ratio": ratio, "seed": seed}
    source = resolve_source(name, split)
    name, files = source.name, source.files
    if source.table is not None:
        return _table_rows(source.table, name, **options)
    if not any(raw.strip() for p in files for _, _, raw in iter_lines(p)):
        raise ValueError(f"dataset {name} is empty")
    stamps = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    try:
        return datasets.Dataset.from_generator(
            _jsonl_rows, gen_kwargs={"stamps": stamps, **options}, features=ROW_FEATURES, split="train"
        )
    except datasets.exceptions.DatasetGenerationError as err:
        raise (data_error_in(err) or err) from err


def split_rejected(rows, rejected_path=None, write=True):
    """(good rows, number rejected): rejected lines go to `rejected_path` (when `write`, i.e. on one process)."""
    rejected = [json.loads(text) for text in rows["rejected"] if text is not None]
    if rejected and write:
        with RejectedWriter(rejected_path) as writer:
            for item in rejected:
                writer.add(item["file"], item["line"], item["reason"], item["raw"])
    if rejected:
        rows = rows.filter(lambda text: text is None, input_columns="rejected")
    return rows.remove_columns("rejected"), len(rejected)


def load_chat_dataset(
    name_or_path,
    split="train",
    skip_bad=False,
    rejected_path=None,
    system_prompts=None,
    system_prompt_ratio=0.2,
    seed=0,
    write_rejected=True,
) -> tuple[datasets.Dataset, int]:
    """Conversations for SFT from local JSONL/parquet files, folders, globs, a saved dataset or a Hub id, and the
    number of records skipped; `split` picks the split where there are several (see data_process.sources).

    Without `skip_bad` the first bad record raises DataError (`file:line: field ...`); with it, bad records are
    counted and written to `rejected_path` (default `<dataset>.rejected.jsonl`). `system_prompts` (with
    `system_prompt_ratio`, seeded) are added to conversations that have no system message, as upstream does.
    """
    rows = _load_rows(name_or_path, split, skip_bad, tuple(system_prompts or ()), system_prompt_ratio, seed)
    if rejected_path is None:
        rejected_path = rejected_path_for(str(name_or_path).rstrip("/"))
    rows, rejected = split_rejected(rows, rejected_path, write_rejected)
    if rejected:
        logger.warning("%s: skipped %d bad records, written to %s", name_or_path, rejected, rejected_path)
    if len(rows) == 0:
        raise ValueError(f"dataset {name_or_path} has no usable conversation")
    logger.info("loaded %d conversations from %s", len(rows), name_or_path)
    return rows, rejected


def conversation_tokens(rows, tokenizer, max_length=None, num_proc=None) -> np.ndarray:
    """The tokens of each conversation as the chat template lays it out (tools included), cut at `max_length` as
    SFT cuts it: what a conversation weighs in training."""

    def count(batch):
        texts = [
            tokenizer.apply_chat_template(messages, tools=json.loads(tools) if tools else None, tokenize=False)
            for messages, tools in zip(batch["messages"], batch["tools"])
        ]
        return {"tokens": [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]}

    counted = rows.map(count, batched=True, remove_columns=rows.column_names, num_proc=num_proc, desc="count tokens")
    tokens = np.asarray(counted["tokens"], dtype=np.int64)
    return np.minimum(tokens, max_length) if max_length else tokens
