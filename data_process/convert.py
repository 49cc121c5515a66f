"""Convert common dataset formats to the project formats (pretrain, sft, dpo, rl, prompt).

    python -m data_process.convert --input alpaca.jsonl sharegpt.jsonl --output sft.jsonl

Sources (detected per record with --from auto):
  minimind       {"text"} / {"conversations": [{"role","content"}]} / {"chosen","rejected"} / rlaif
                 (conversations ending in a placeholder assistant turn, empty or "无", becomes `prompt`)
  sharegpt       {"conversations": [{"from": "human"|"gpt"|"system"|"observation"|"function_call", "value"}]}
  alpaca         {"instruction", "input", "output", optional "system", "history": [[q, a], ...]}
  firefly        {"input", "target"}
  prompt_answer  {"prompt"|"question"|"query", "answer"|"response"|"output"} (sft, or rl with --to rl)
  openai         {"messages": [{"role","content"}], optional "tools"} (text content parts are joined)
  preference     {"prompt", "chosen", "rejected"} with string answers (becomes dpo)
Every output record is validated against its project format before it is written.
"""

import json

from data_process.records import VALIDATORS
from data_process.rejected import print_rejected
from data_process.transform import JsonlTransform, add_io_arguments
from modeling_miniminds.cli import FlagParser, command_main

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_response": "tool",
    "function_call": "assistant",
}
PROMPT_KEYS = ("prompt", "question", "query", "instruction")
ANSWER_KEYS = ("answer", "response", "output")
SOURCES = ("minimind", "sharegpt", "alpaca", "firefly", "prompt_answer", "openai", "preference")
TARGETS = ("auto", "pretrain", "sft", "dpo", "rl", "prompt")
# What upstream MiniMind's rlaif.jsonl puts in the assistant turn the policy is to write.
RLAIF_PLACEHOLDERS = ("", "无")


def _string(record, key, where=None):
    value = record.get(key)
    if not isinstance(value, str):
        got = type(value).__name__ if value is not None else "missing"
        raise ValueError(f"field '{where or key}': expected a string, got {got}")
    return value


def detect_source(record):
    """Name the source format of one record from its keys."""
    if "messages" in record:
        return "openai"
    if "conversations" in record:
        turns = record["conversations"]
        first = turns[0] if isinstance(turns, list) and turns else {}
        return "sharegpt" if isinstance(first, dict) and "from" in first else "minimind"
    if "chosen" in record and "rejected" in record:
        return "minimind" if isinstance(record["chosen"], list) else "preference"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "target" in record and "input" in record:
        return "firefly"
    if any(k in record for k in PROMPT_KEYS) and any(k in record for k in ANSWER_KEYS):
        return "prompt_answer"
    if "text" in record:
        return "minimind"
    keys = ", ".join(record) or "none"
    raise ValueError(f"unknown source format (keys: {keys}); expected one of {', '.join(SOURCES)}")


def from_minimind(record):
    """MiniMind files are already project formats, except rlaif: a chat ending in a placeholder assistant turn."""
    turns = record.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
        last = turns[-1]
        if last.get("role") == "assistant" and (last.get("content") or "").strip() in RLAIF_PLACEHOLDERS:
            return "prompt", {"prompt": turns[:-1]}
        return "sft", {"conversations": turns}
    if "chosen" in record:
        return "dpo", {"chosen": record["chosen"], "rejected": record["rejected"]}
    return "pretrain", {"text": record.get("text")}


def _tool_call(value, where):
    try:
        call = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"field '{where}': function_call value is not JSON") from None
    if not isinstance(call, dict) or "name" not in call:
        raise ValueError(f"field '{where}': function_call needs a JSON object with a name")
    return {"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}}


def from_sharegpt(record):
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise ValueError("field 'conversations': expected a list")
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise ValueError(f"field '{where}': expected an object with from and value")
        source_role = turn.get("from")
        if source_role not in SHAREGPT_ROLES:
            expected = ", ".join(SHAREGPT_ROLES)
            raise ValueError(f"field '{where}.from': unknown role {source_role!r} (expected one of {expected})")
        value = _string(turn, "value", f"{where}.value")
        if source_role == "function_call":
            messages.append({"role": "assistant", "content": "", "tool_calls": [_tool_call(value, where)]})
        else:
            messages.append({"role": SHAREGPT_ROLES[source_role], "content": value})
    return "sft", {"conversations": messages}


def from_alpaca(record):
    instruction = _string(record, "instruction")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError(f"field 'input': expected a string, got {type(extra).__name__}")
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for i, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"field 'history[{i}]': expected [question, answer] strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    question = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": _string(record, "output")}]
    return "sft", {"conversations": messages}


def from_firefly(record):
    messages = [{"role": "user", "content": _string(record, "input")}]
    messages.append({"role": "assistant", "content": _string(record, "target")})
    return "sft", {"conversations": messages}


def from_prompt_answer(record, target="sft"):
    prompt_key = next(k for k in PROMPT_KEYS if k in record)
    answer_key = next(k for k in ANSWER_KEYS if k in record)
    prompt, answer = _string(record, prompt_key), _string(record, answer_key)
    if target == "rl":
        return "rl", {"prompt": [{"role": "user", "content": prompt}], "answer": answer}
    return "sft", {"conversations": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def _openai_content(content, where):
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"field '{where}[{j}]': only text content parts are supported, got {kind!r}")
            parts.append(part.get("text") or "")
        return "".join(parts)
    return content if content is not None else ""


def from_openai(record):
    messages = record["messages"]
    if not isinstance(messages, list):
        raise ValueError("field 'messages': expected a list")
    converted = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"field 'messages[{i}]': expected an object with role and content")
        content = _openai_content(message.get("content"), f"messages[{i}].content")
        out = {"role": message.get("role"), "content": content}
        if message.get("tool_calls"):
            out["tool_calls"] = message["tool_calls"]
        converted.append(out)
    return "sft", {"conversations": converted}


def from_preference(record):
    prompt = [{"role": "user", "content": _string(record, "prompt")}]
    return "dpo", {
        "chosen": prompt + [{"role": "assistant", "content": _string(record, "chosen")}],
        "rejected": prompt + [{"role": "assistant", "content": _string(record, "rejected")}],
    }


CONVERTERS = {
    "minimind": from_minimind,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "firefly": from_firefly,
    "prompt_answer": from_prompt_answer,
    "openai": from_openai,
    "preference": from_preference,
}


def convert_record(record, source="auto", target="auto"):
    """Return (project format, record) for one source record; raise ValueError naming the field on bad input."""
    source = detect_source(record) if source == "auto" else source
    if source not in CONVERTERS:
        raise ValueError(f"--from: expected auto or one of {', '.join(SOURCES)}, got {source!r}")
    if source == "prompt_answer":
        fmt, converted = from_prompt_answer(record, "rl" if target == "rl" else "sft")
    else:
        fmt, converted = CONVERTERS[source](record)
    if target not in ("auto", fmt):
        raise ValueError(f"{source} records convert to {fmt}, not {target}")
    VALIDATORS[fmt](converted)
    return fmt, converted


def convert_jsonl(inputs, output, source="auto", target="auto", skip_bad=False):
    """Convert files into one project-format JSONL; return counts per output format and rejected lines.

    All records must convert to the same project format (one output file holds one format).
    """
    counts = {}
    with JsonlTransform(inputs, output, skip_bad=skip_bad, desc="convert") as job:
        for item in job.records():
            try:
                fmt, converted = convert_record(item.record, source, target)
                if counts and fmt not in counts:
                    raise ValueError(f"converts to {fmt} but earlier records gave {next(iter(counts))}")
            except ValueError as err:
                job.reject(item, err)
                continue
            job.write(converted)
            counts[fmt] = counts.get(fmt, 0) + 1
    counts["rejected"] = job.rejected
    return counts


def make_parser():
    parser = add_io_arguments(FlagParser(description=__doc__), formats=False)
    parser.add_argument("--from", dest="source", default="auto", choices=("auto", *SOURCES), help="source format")
    parser.add_argument(
        "--to", dest="target", default="auto", choices=TARGETS, help="project format to produce (auto: natural one)"
    )
    return parser


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    counts = convert_jsonl(args.input, args.output, args.source, args.target, args.skip_bad)
    rejected = counts.pop("rejected")
    print(f"wrote {', '.join(f'{n} {fmt}' for fmt, n in counts.items()) or 'no'} records to {args.output}")
    print_rejected(rejected, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
