"""The project's record formats (pretrain, sft, dpo, rl, prompt): what each requires, how to tell them apart, and
the error that names a bad field, so every tool and recipe rejects the same records with the same words."""

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("pretrain", "sft", "dpo", "rl", "prompt")
# Where an sft record keeps its turns: OpenAI's `messages` (what the built-in corpus writes and TRL's trainers read as
# conversational data), or upstream MiniMind's `conversations`.
TURNS_FIELDS = ("messages", "conversations")


class DataError(ValueError):
    """A bad input record; the message starts with `file:line:`."""


def data_error_in(err: BaseException) -> DataError | None:
    """The `DataError` behind `err`, if any: `datasets` wraps what a generator raises in its own errors, so a loader
    re-raises this instead, and the `file:line` message reaches the user rather than a datasets traceback."""
    while err is not None:
        if isinstance(err, DataError):
            return err
        err = err.__cause__ or err.__context__
    return None


def type_name(value):
    return type(value).__name__ if value is not None else "null"


def _check_text(value, field, allow_empty=False):
    if not isinstance(value, str):
        raise ValueError(f"field '{field}': expected a string, got {type_name(value)}")
    if not allow_empty and not value.strip():
        raise ValueError(f"field '{field}': empty text")


def validate_messages(messages, field="conversations", final_assistant=False):
    """Check a chat: a non-empty list of {role, content} with known roles and at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"field '{field}': expected a non-empty list of messages, got {type_name(messages)}")
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"field '{where}': expected an object with role and content, got {type_name(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"field '{where}.role': unknown role {role!r} (expected one of {', '.join(ROLES)})")
        # an assistant turn may be only tool calls; upstream MiniMind's system turn may carry only the tool list
        carries_other = bool(
            message.get("tool_calls") if role == "assistant" else role == "system" and message.get("tools")
        )
        _check_text(message.get("content"), f"{where}.content", allow_empty=carries_other)
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and (role != "assistant" or not isinstance(tool_calls, list)):
            raise ValueError(f"field '{where}.tool_calls': expected a list on an assistant message")
        if message.get("reasoning_content") is not None:
            _check_text(message["reasoning_content"], f"{where}.reasoning_content", allow_empty=True)
    if final_assistant and messages[-1]["role"] != "assistant":
        raise ValueError(f"field '{field}': last message must be from the assistant, got {messages[-1]['role']!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"field '{field}': no assistant message")


def validate_pretrain(record, text_column="text"):
    if text_column not in record:
        raise ValueError(f"field '{text_column}': missing (keys: {', '.join(record) or 'none'})")
    _check_text(record[text_column], text_column)


def turns_field(record) -> str | None:
    """The field of `TURNS_FIELDS` that holds the record's turns (`messages` when both are there), else None."""
    return next((field for field in TURNS_FIELDS if field in record), None)


def validate_sft(record):
    field = turns_field(record)
    if field is None:
        raise ValueError(f"field 'messages': missing (keys: {', '.join(record) or 'none'})")
    validate_messages(record[field], field)


def validate_dpo(record):
    for field in ("chosen", "rejected"):
        if field not in record:
            raise ValueError(f"field '{field}': missing (keys: {', '.join(record) or 'none'})")
        validate_messages(record[field], field, final_assistant=True)


def _validate_prompt_field(record):
    if "prompt" not in record:
        raise ValueError(f"field 'prompt': missing (keys: {', '.join(record) or 'none'})")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        _check_text(prompt, "prompt")
        return
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"field 'prompt': expected a string or a non-empty list of messages, got {type_name(prompt)}")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            raise ValueError(f"field 'prompt[{i}].role': unknown role {role!r} (expected one of {', '.join(ROLES)})")
        _check_text(message.get("content"), f"prompt[{i}].content")
    if prompt[-1]["role"] == "assistant":
        raise ValueError("field 'prompt': must end with a user or tool message, not the assistant")


def validate_rl(record):
    """RL with a verifiable answer: `prompt` (text or messages) and a non-empty string `answer`."""
    _validate_prompt_field(record)
    if "answer" not in record:
        raise ValueError(f"field 'answer': missing (keys: {', '.join(record)})")
    _check_text(record["answer"], "answer")


def validate_prompt(record):
    """Prompt-only RL data (scored by a reward model): `prompt` only."""
    _validate_prompt_field(record)


VALIDATORS = {
    "pretrain": validate_pretrain,
    "sft": validate_sft,
    "dpo": validate_dpo,
    "rl": validate_rl,
    "prompt": validate_prompt,
}


def detect_format(record):
    """Guess the project format of one record from its keys."""
    if "chosen" in record and "rejected" in record:
        return "dpo"
    if turns_field(record):
        return "sft"
    if "prompt" in record:
        return "rl" if "answer" in record else "prompt"
    if "text" in record:
        return "pretrain"
    keys = ", ".join(record) or "none"
    raise ValueError(f"unknown record format (keys: {keys}); expected one of {', '.join(FORMATS)}")


def validate_auto(record):
    VALIDATORS[detect_format(record)](record)


def get_validator(fmt):
    """Validator for a format name; `auto` detects the format of each record."""
    if fmt in (None, "none"):
        return None
    if fmt == "auto":
        return validate_auto
    if fmt not in VALIDATORS:
        raise ValueError(f"--format: expected one of auto, {', '.join(FORMATS)}, got {fmt!r}")
    return VALIDATORS[fmt]


def _message_texts(messages):
    for message in messages:
        yield message.get("reasoning_content") or ""
        yield message.get("content") or ""


def record_text(record):
    """All natural-language text of a record in any project format, joined by newlines (for tokenizers, dedup)."""
    fmt = detect_format(record)
    if fmt == "pretrain":
        parts = [record["text"]]
    elif fmt == "sft":
        parts = list(_message_texts(record[turns_field(record)]))
    elif fmt == "dpo":
        parts = list(_message_texts(record["chosen"])) + [record["rejected"][-1].get("content") or ""]
    else:
        prompt = record["prompt"]
        parts = [prompt] if isinstance(prompt, str) else list(_message_texts(prompt))
        if record.get("answer"):
            parts.append(record["answer"])
    return "\n".join(p for p in parts if p)
