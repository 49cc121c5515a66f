"""Upstream MiniMind's agent RL layout (`agent_rl.jsonl`, `agent_rl_math.jsonl`), checked and read as RL prompts.

    {"conversations": [{"role": "system", "content": "...", "tools": "<JSON text or list of function schemas>"},
                       {"role": "user", "content": "..."}, ..., {"role": "assistant", "content": ""}],
     "gt": ["values", "the final answer must state"]}

Upstream's data ends each conversation with a placeholder assistant turn that the rollout replaces; the prompt is the
conversation without it. The system turn's `tools` (a record may declare none: a question answered without tools)
goes beside the prompt as the record's tool list, each schema in OpenAI's `{"type": "function", "function": ...}`
form. `gt` becomes a list of strings: a single string or number is one value, and numbers stay comparable by value
(`data_process.trajectories`). Assistant turns inside the prompt may carry `tool_calls` as JSON text, as upstream
writes them; they are read into lists of calls whose arguments are JSON text (`text_arguments`).
"""

import json

from data_process.records import ROLES, type_name
from data_process.tool_schema import function_of

LAYOUT = "the agent layout: `conversations` (tools on the system turn) and `gt`"


def is_agent_record(record: dict) -> bool:
    """A record with `gt`, or a chat whose system turn declares tools; upstream's rlaif chats have neither."""
    turns = record.get("conversations")
    declares = isinstance(turns, list) and any(
        isinstance(turn, dict) and turn.get("role") == "system" and turn.get("tools") for turn in turns
    )
    return "gt" in record or declares


def parse_json_text(value, field: str):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"field '{field}': not JSON text ({err.msg} at column {err.colno})") from None


def declared_tools(message: dict, field: str) -> list[dict]:
    """The tool schemas a system turn declares, as `{"type": "function", "function": {...}}`."""
    tools = parse_json_text(message.get("tools"), field)
    if not isinstance(tools, list):
        raise ValueError(f"field '{field}': expected a list of function schemas, got {type_name(tools)}")
    schemas = []
    for i, schema in enumerate(tools):
        try:
            function = function_of(schema)
        except ValueError as err:
            raise ValueError(f"field '{field}[{i}]': {err}") from None
        if not isinstance(function.get("parameters", {}), dict):
            raise ValueError(f"field '{field}[{i}].parameters': expected an object")
        schemas.append({"type": "function", "function": function})
    return schemas


def gt_values(gt) -> list[str]:
    """`gt` as a non-empty list of strings; a single string or number is one value."""
    values = gt if isinstance(gt, list) else [gt]
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            raise ValueError(f"field 'gt[{i}]': expected a non-empty string or a number, got {value!r}")
    if not values:
        raise ValueError("field 'gt': empty list (the values the final answer must state)")
    return [str(value) for value in values]


def prompt_message(message: dict, where: str) -> dict:
    """A conversation turn as the chat template takes it: known role, text content, `tool_calls` as a list."""
    if not isinstance(message, dict):
        raise ValueError(f"field '{where}': expected an object with role and content, got {type_name(message)}")
    if message.get("role") not in ROLES:
        raise ValueError(f"field '{where}.role': unknown role {message.get('role')!r} (expected one of {ROLES})")
    out = {key: value for key, value in message.items() if key != "tools" and value is not None}
    out["content"] = message.get("content") or ""
    if not isinstance(out["content"], str):
        raise ValueError(f"field '{where}.content': expected a string, got {type_name(message['content'])}")
    if "tool_calls" in out:
        calls = parse_json_text(out["tool_calls"], f"{where}.tool_calls")
        if not isinstance(calls, list):
            raise ValueError(f"field '{where}.tool_calls': expected a list")
        out["tool_calls"] = [text_arguments(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls)]
    return out


def text_arguments(call, where: str) -> dict:
    """An earlier turn's tool call as `{"type": "function", "function": {"name", "arguments": JSON text}}`: the
    chat template renders text arguments as they are, and a `datasets` column cannot hold argument objects whose
    keys differ from call to call (Arrow would give every call every key)."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f"field '{where}': expected a call with a function name, got {call!r}")
    arguments = function.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}


def agent_prompt(record: dict) -> dict:
    """An agent record as an RL prompt record: `prompt` (the conversation without a trailing assistant turn),
    `tools` (the declared schemas) and `gt` (strings), plus the record's other fields. ValueError names the field."""
    if "conversations" not in record:
        raise ValueError(f"field 'conversations': missing ({LAYOUT}; keys: {', '.join(record) or 'none'})")
    if "gt" not in record:
        raise ValueError(f"field 'gt': missing ({LAYOUT}; keys: {', '.join(record) or 'none'})")
    conversations = record["conversations"]
    if not isinstance(conversations, list) or not conversations:
        raise ValueError(
            f"field 'conversations': expected a non-empty list of messages, got {type_name(conversations)}"
        )
    messages = [prompt_message(m, f"conversations[{i}]") for i, m in enumerate(conversations)]
    tools = []
    for i, message in enumerate(conversations):
        if message.get("tools"):
            if message.get("role") != "system":
                raise ValueError(f"field 'conversations[{i}].tools': tools belong on the system turn")
            tools = declared_tools(message, f"conversations[{i}].tools")
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise ValueError("field 'conversations': the prompt (without a last assistant turn) must end with a user turn")
    rest = {key: value for key, value in record.items() if key not in ("conversations", "gt", "prompt", "tools")}
    return {**rest, "prompt": messages, "tools": tools, "gt": gt_values(record["gt"])}
