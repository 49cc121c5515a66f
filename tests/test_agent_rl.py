"""Agentic RL: upstream's agent layout read as GRPO prompts (and its `file:line` errors), the tool registry (stand-ins,
a user's module, argument checks, time limit), TRL's tool loop with per-record tools driven by a scripted policy,
the held-out agent numbers, and one real GRPO step with tools on the tiny model."""

import json
import re
import sys
from pathlib import Path

import pytest
from helpers import ScriptedPolicy, stage_args
from transformers.utils import get_json_schema

from data_process.demo_tools import DEMO_TOOL_SCHEMAS, DEMO_TOOLS
from data_process.records import DataError
from modeling_miniminds.tokenizer import load_tokenizer
from recipes.grpo import main, make_parser
from recipes.training.agent import agent_metrics, usable_records
from recipes.training.callbacks import METRICS_FILE, read_metrics
from recipes.training.grpo import grpo
from recipes.training.rl import read_located_rl_records, read_rl_records
from recipes.training.tool_registry import bind_tools, build_registry, declared_tool, tool_environments

REPO = Path(__file__).resolve().parents[1]
SLOW_TOOLS = '''
import time


def slow_lookup(query: str) -> str:
    """Look something up, slowly.

    Args:
        query: What to look up.
    """
    time.sleep(3)
    return "done"


def shout(text: str) -> str:
    """Say a text loudly.

    Args:
        text: The text.
    """
    return text.upper() + "!"


def helper(value):
    return value
'''


def schemas(*names, extra=()):
    return [DEMO_TOOL_SCHEMAS[name] for name in names] + list(extra)


SLOW_SCHEMA = {
    "type": "function",
    "function": {
        "name": "slow_lookup",
        "description": "Look something up, slowly.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}

# Question -> (declared tools, the call the scripted policy makes, gt): one per stand-in tool, then an undeclared
# tool, arguments that break the schema and a tool that overruns its time limit.
CASES = {
    "weather in Paris": (schemas("get_current_weather", "get_current_time"), ("get_current_weather", {"location": "Paris"}), ["19"]),
    "time in Tokyo": (schemas("get_current_time"), ("get_current_time", {"timezone": "Asia/Tokyo"}), ["21:00"]),
    "5 km in miles": (schemas("unit_converter"), ("unit_converter", {"value": 5, "from_unit": "km", "to_unit": "mile"}), ["3.11"]),
    "dollar to yuan": (schemas("get_exchange_rate"), ("get_exchange_rate", {"from_currency": "USD", "to_currency": "CNY"}), ["7.2"]),
    "translate hello": (schemas("translate_text"), ("translate_text", {"text": "你好世界", "target_language": "english"}), ["hello world"]),
    "twelve times 34": (schemas("calculate_math"), ("calculate_math", {"expression": "12 * 34"}), 408),
    "stock price": (schemas("get_current_weather"), ("get_stock_price", {"symbol": "ACME"}), ["42"]),
    "five km": (schemas("unit_converter"), ("unit_converter", {"value": "five", "from_unit": "km"}), ["3.1"]),
    "slow lookup": ([SLOW_SCHEMA], ("slow_lookup", {"query": "x"}), ["done"]),
}  # fmt: skip
GOOD = 6  # the first six cases call a declared tool correctly and their answers state every gt value
VALID_MINUS_INVALID = GOOD + 1 - 2  # the slow call is valid (the tool overruns), two calls are not


def agent_line(question, tools, gt, placeholder=True):
    conversations = [
        {"role": "system", "content": "Use the tools.", "tools": json.dumps(tools)},
        {"role": "user", "content": question},
    ] + ([{"role": "assistant", "content": ""}] if placeholder else [])
    return json.dumps({"conversations": conversations, "gt": gt}, ensure_ascii=False)


@pytest.fixture
def agent_file(tmp_path):
    path = tmp_path / "agent_rl.jsonl"
    path.write_text("\n".join(agent_line(q, tools, gt) for q, (tools, _, gt) in CASES.items()) + "\n")
    return path


@pytest.fixture
def tools_module(tmp_path, monkeypatch):
    (tmp_path / "agent_test_tools.py").write_text(SLOW_TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "agent_test_tools"
    sys.modules.pop("agent_test_tools", None)


def test_agent_layout_becomes_prompts_with_tools_and_gt(tmp_path):
    """The trailing placeholder turn is dropped, tools come off the system turn (JSON text or a list), gt becomes
    strings; a record ending with the user's turn is read too; calculator records still read as before."""
    path = tmp_path / "mixed.jsonl"
    listed = {
        "conversations": [
            {"role": "system", "content": "s", "tools": [DEMO_TOOL_SCHEMAS["calculate_math"]["function"]]},
            {"role": "user", "content": "q"},
        ],
        "gt": 408,
    }
    calculator = {"prompt": "What is 6 * 7?", "answer": "42"}
    listed["conversations"] += [
        {"role": "assistant", "content": "", "tool_calls": '[{"name": "calculate_math", "arguments": {"expression": "6*7"}}]'},
        {"role": "tool", "content": '{"result": "42"}'},
        {"role": "user", "content": "and 12 * 34?"},
    ]  # fmt: skip
    lines = [agent_line("weather in Paris", schemas("get_current_weather"), ["19", "sunny"]), json.dumps(listed)]
    path.write_text("\n".join([*lines, json.dumps(calculator)]) + "\n")
    (where, first), (_, second), (_, third) = read_located_rl_records(path)
    assert where == f"{path}:1"
    assert first["prompt"] == [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "weather in Paris"},
    ]
    assert first["tools"] == schemas("get_current_weather") and first["gt"] == ["19", "sunny"]
    assert second["tools"] == schemas("calculate_math") and second["gt"] == ["408"]
    assert second["prompt"][2]["tool_calls"] == [
        {"type": "function", "function": {"name": "calculate_math", "arguments": '{"expression": "6*7"}'}}
    ]
    assert third == calculator


@pytest.mark.parametrize(
    "line, message",
    [
        (
            '{"conversations": [{"role": "system", "content": "s", "tools": "[]"}, {"role": "user", "content": "q"}]}',
            "agent.jsonl:1: field 'gt': missing",
        ),
        ('{"messages": [], "gt": ["1"]}', "agent.jsonl:1: field 'conversations': missing"),
        ('{"question": "q"}', "agent.jsonl:1: field 'prompt': missing (keys: question); expected `prompt`"),
        (
            '{"conversations": [{"role": "system", "content": "s", "tools": "[{"}, {"role": "user", "content": "q"}],'
            ' "gt": ["1"]}',
            "agent.jsonl:1: field 'conversations[0].tools': not JSON text",
        ),
        (
            '{"conversations": [{"role": "user", "content": "q", "tools": "[]"}], "gt": ["1"]}',
            "agent.jsonl:1: field 'conversations[0].tools': tools belong on the system turn",
        ),
        (
            '{"conversations": [{"role": "system", "content": "s"}, {"role": "assistant", "content": ""}], "gt": [1]}',
            "agent.jsonl:1: field 'conversations': the prompt (without a last assistant turn) must end with a user",
        ),
        ('{"conversations": [{"role": "user", "content": "q"}], "gt": [null]}', "agent.jsonl:1: field 'gt[0]'"),
    ],
    ids=["no-gt", "no-conversations", "neither", "tools-json", "tools-turn", "no-question", "gt-value"],
)
def test_a_record_in_neither_layout_fails_at_its_line(tmp_path, line, message):
    path = tmp_path / "agent.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError) as err:
        read_rl_records(path)
    assert str(err.value).startswith(str(tmp_path / message))


def test_an_undeclared_registry_tool_stops_the_load_or_is_skipped(tmp_path):
    path = tmp_path / "agent.jsonl"
    unknown = {"type": "function", "function": {"name": "get_stock_price", "parameters": {}}}
    lines = [agent_line("weather", schemas("get_current_weather"), ["19"]), agent_line("stock", [unknown], ["1"])]
    path.write_text("\n".join(lines) + "\n")
    located, registry = read_located_rl_records(path), build_registry()
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: declares the tool 'get_stock_price'")):
        usable_records(located, registry, skip_unknown=False)
    kept, skipped = usable_records(located, registry, skip_unknown=True)
    assert len(kept) == 1 and skipped == 1


def test_stand_in_tools_answer_from_their_tables_and_keep_their_schemas():
    """Same arguments, same answer; an unknown row is an error, never a guess; a declared schema renders as given."""
    assert json.loads(DEMO_TOOLS["get_current_weather"](location="巴黎"))["temperature_c"] == 19
    assert json.loads(DEMO_TOOLS["get_current_time"](timezone="Asia/Tokyo"))["time"] == "21:00"
    assert json.loads(DEMO_TOOLS["unit_converter"](value=100, from_unit="celsius", to_unit="F"))["result"] == 212
    assert json.loads(DEMO_TOOLS["get_exchange_rate"](from_currency="eur", to_currency="usd"))["rate"] == 1.087
    assert json.loads(DEMO_TOOLS["translate_text"](text="Good morning", target_language="中文")) == {
        "translated_text": "早上好"
    }
    assert json.loads(DEMO_TOOLS["calculate_math"](expression="2^10"))["result"] == "1024"
    with pytest.raises(ValueError, match="no weather for 'Atlantis'"):
        DEMO_TOOLS["get_current_weather"](location="Atlantis")
    tools = bind_tools(list(DEMO_TOOL_SCHEMAS.values()), build_registry(), timeout=1.0)
    for name, tool in tools.items():
        assert get_json_schema(tool)["function"] == DEMO_TOOL_SCHEMAS[name]["function"]
    assert tools["calculate_math"](expression="__import__('os')").startswith("error: ")


def test_declared_tools_check_arguments_fill_defaults_and_time_out(tools_module):
    registry = build_registry(tools_module)
    assert set(registry) >= {"calculator", "slow_lookup", "shout", *DEMO_TOOLS} and "helper" not in registry
    upstream_time = {
        "name": "get_current_time",
        "description": "获取时间",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "default": "Asia/Tokyo"}}},
    }
    tools = bind_tools([upstream_time, DEMO_TOOL_SCHEMAS["unit_converter"]], registry, timeout=0.3)
    assert json.loads(tools["get_current_time"]())["time"] == "21:00"
    assert tools["unit_converter"](value="five", from_unit="km", colour="red") == (
        "error: unit_converter: missing required argument 'to_unit'; argument 'value' must be number, got str; "
        "unexpected argument 'colour' (declared: value, from_unit, to_unit)"
    )
    assert tools["unit_converter"](value=1, from_unit="km", to_unit="kg").startswith("error: cannot convert 'km'")
    slow = declared_tool(SLOW_SCHEMA, registry["slow_lookup"], timeout=0.2)
    assert slow(query="x") == "error: the tool took longer than 0.2 s"
    environment = tool_environments({"toolset0": [SLOW_SCHEMA]}, registry, 0.2)["toolset0"]()
    assert environment.reset(prompt=[]) is None and environment.slow_lookup(query="x").startswith("error: the tool")


def scripted_reply(prompt: str) -> str:
    """What a policy trained for these questions says: the case's call, then, once the tool has answered, the
    tool's answer as its own."""
    turn = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", turn, re.DOTALL)
    if results:
        return f"Answer: {results[-1]}<|im_end|>"
    question = turn.split("<|im_end|>")[0]
    name, arguments = CASES[question][1]
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call><|im_end|>'


def recipe_args(model, dataset, out, *overrides):
    rewards = ["--reward_funcs", "gt", "valid_calls", "unfinished"]
    return stage_args(make_parser(), "grpo_tiny", model, dataset, out, "--use_tools", "true", *rewards, *overrides)


def logged(out, key):
    return [r[key] for r in read_metrics(Path(out) / METRICS_FILE) if r.get(key) is not None]


def test_scripted_agent_through_trl_tool_loop_and_the_held_out_loop(
    quick_sft_folder, agent_file, tools_module, tmp_path
):
    """Every record offers only its declared tools; each stand-in answers, the undeclared tool, the bad arguments
    and the overrunning tool answer errors. The rewards and the held-out numbers see the six good trajectories."""
    flags = ["--tools_module", tools_module, "--tool_timeout", 0.3, "--tool_eval_dataset", agent_file]
    flags += ["--num_generations", 2, "--per_device_train_batch_size", 18, "--max_steps", 1, "--logging_steps", 1]
    flags += ["--max_completion_length", 400, "--tool_eval_max_new_tokens", 200, "--beta", 0]
    script_args, training_args, model_args = recipe_args(quick_sft_folder, agent_file, tmp_path, *flags)
    result = grpo(
        script_args,
        training_args,
        model_args,
        callbacks=[ScriptedPolicy(load_tokenizer(quick_sft_folder), scripted_reply)],
    )
    assert result["steps"] == 1 and result["agent"]["agent_records"] == len(CASES)
    assert result["agent"]["skipped_records"] == 0 and len(result["agent"]["toolsets"]) == 8
    assert logged(tmp_path, "tools/call_frequency") == [1.0]
    assert logged(tmp_path, "rewards/gt/mean") == [pytest.approx(GOOD / len(CASES))]
    assert logged(tmp_path, "rewards/valid_calls/mean") == [pytest.approx(VALID_MINUS_INVALID / len(CASES))]
    assert logged(tmp_path, "rewards/unfinished/mean") == [0.0]
    assert logged(tmp_path, "tools/failure_frequency") == [pytest.approx(1 / len(CASES))]  # TRL: tool not found
    for side in (result["before"], result["after"]):
        assert side["agent_call_rate"] == 1.0 and side["agent_turns"] == 2.0
        assert side["agent_valid_call_rate"] == round((GOOD + 1) / len(CASES), 4)
        assert side["agent_gt_hit_rate"] == round(GOOD / len(CASES), 4)
    transcript = result["before"]["agent_samples"][0]["transcript"]
    assert [m["role"] for m in transcript] == ["assistant", "tool", "assistant"]
    assert json.loads(transcript[1]["content"])["temperature_c"] == 19
    gains = result["gains"]["agent_gt_hit_rate"]
    assert gains["n"] == len(CASES) and gains["diff"] == 0
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["eval_agent_gt_hit_rate"] == round(GOOD / len(CASES), 4)


def test_agent_metrics_on_hand_made_trajectories():
    record = {"tools": schemas("unit_converter"), "gt": ["3.1069"]}
    call = {
        "type": "function",
        "function": {"name": "unit_converter", "arguments": {"value": 5, "from_unit": "km", "to_unit": "mile"}},
    }
    bad = {"type": "function", "function": {"name": "convert", "arguments": {}}}
    transcripts = [
        [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "About 3.11 miles."}],
        [{"role": "assistant", "content": "", "tool_calls": [bad]}, {"role": "tool", "content": "error"}, {"role": "assistant", "content": "3.5 miles"}],
        [{"role": "assistant", "content": "I think 3.1069."}],
        [{"role": "assistant", "content": "", "tool_calls": [call]}],
    ]  # fmt: skip
    metrics = agent_metrics(transcripts, [record] * 4)
    assert metrics["agent_call_rate"] == 0.75 and metrics["agent_valid_call_rate"] == 0.5
    assert metrics["agent_gt_hit_rate"] == 0.5 and metrics["agent_turns"] == 1.5
    assert metrics["items"]["agent_turns"] == [2.0, 2.0, 1.0, 1.0]


def test_one_real_grpo_step_with_per_record_tools(quick_sft_folder, tiny_corpus, tmp_path):
    """The tiny model's own replies (no script) through TRL's tool loop on the built-in agent records."""
    flags = ["--num_generations", 2, "--per_device_train_batch_size", 4, "--max_steps", 1, "--logging_steps", 1]
    flags += ["--max_completion_length", 16, "--tool_eval_dataset", tiny_corpus["eval_agent"], "--tool_eval_samples", 4]
    flags += ["--tool_eval_max_new_tokens", 8, "--max_tool_calling_iterations", 1]
    result = grpo(*recipe_args(quick_sft_folder, tiny_corpus["agent"], tmp_path, *flags))
    assert result["steps"] == 1 and result["agent"]["agent_records"] == 60
    assert set(result["after"]) >= {"agent_call_rate", "agent_valid_call_rate", "agent_gt_hit_rate", "agent_turns"}
    assert logged(tmp_path, "rewards/gt/mean") and logged(tmp_path, "tools/call_frequency")
    assert (tmp_path / "model.safetensors").exists()


def test_cli_says_which_reward_agent_records_need(quick_sft_folder, agent_file, tmp_path, monkeypatch, capsys):
    argv = ["recipes/grpo.py", "--model_name_or_path", str(quick_sft_folder), "--dataset_name", str(agent_file)]
    monkeypatch.setattr(sys, "argv", [*argv, "--output_dir", str(tmp_path), "--use_tools", "true"])
    with pytest.raises(SystemExit) as exit_info:
        main(*make_parser().parse_args_and_config())
    assert exit_info.value.code == 1
    assert "--reward_funcs accuracy reads `answer`, which agent records such as" in capsys.readouterr().err
