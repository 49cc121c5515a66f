"""Reward functions: TRL GRPO call convention, conversational completions, answer normalisation, and the agent
rewards on hand-made tool-use trajectories."""

import json

import pytest

from data_process.demo_tools import DEMO_TOOL_SCHEMAS
from data_process.rewards import (
    accuracy_reward,
    answers_match,
    extract_answer,
    format_reward,
    get_reward_functions,
    gt_reward,
    length_penalty,
    unfinished_penalty,
    valid_calls_reward,
)


def test_called_like_trl_with_conversational_completions():
    prompts = [[{"role": "user", "content": "3+5?"}]] * 3
    completions = [
        [{"role": "assistant", "content": "3 加 5 等于 8。\n答案：8"}],
        [{"role": "assistant", "content": "<think>\n3+5=9?\n</think>\nAnswer: 9"}],
        [{"role": "assistant", "content": "I think it is 8."}],
    ]
    kwargs = {"completion_ids": [[1], [2], [3]], "answer": ["8", "8", "8"], "trainer_state": None}
    assert accuracy_reward(prompts=prompts, completions=completions, **kwargs) == [1.0, 0.0, 1.0]
    assert format_reward(prompts=prompts, completions=completions, **kwargs) == [1.0, 1.0, 0.0]


def test_thinking_is_ignored_when_extracting():
    assert extract_answer("<think>答案：1</think>\n答案：2") == "2"
    assert extract_answer("no numbers here") is None


@pytest.mark.parametrize(
    "predicted, answer, expected",
    [
        ("8.0", "8", True),
        ("1,000", "1000", True),
        ("Paris.", "paris", True),
        ("北京。", "北京", True),
        ("2024年2月29日", "2024-02-29", True),
        ("February 29, 2024", "2024-02-29", True),
        ("７", "7", True),
        ("9", "8", False),
        ("伦敦", "北京", False),
        (None, "8", False),
    ],
)
def test_answers_match(predicted, answer, expected):
    assert answers_match(predicted, answer) is expected


def test_format_reward_rejects_unclosed_think_and_trailing_text():
    completions = ["<think>unfinished\nAnswer: 3", "Answer: 3\nbut maybe 4", "答案：3\n答案：4", "推理。\n答案：3"]
    assert format_reward(completions=completions) == [0.0, 0.0, 0.0, 1.0]


def test_length_penalty_grows_past_the_limit():
    assert length_penalty(completions=["x" * 10, "x" * 600, "x" * 5000], max_chars=400) == [0.0, -0.5, -1.0]


def test_reward_functions_by_name():
    assert get_reward_functions(["accuracy", "format"]) == [accuracy_reward, format_reward]
    with pytest.raises(ValueError, match="unknown reward function\\(s\\) speed"):
        get_reward_functions(["speed"])


def call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER = call("get_current_weather", location="Paris")
TRAJECTORIES = [
    # a valid call, its result, and an answer stating both gt values
    [
        {"role": "assistant", "content": "", "tool_calls": [WEATHER]},
        {"role": "tool", "content": '{"temperature_c": 19, "condition": "sunny"}'},
        {"role": "assistant", "content": "<think>copy it</think>It is Sunny and 19°C in Paris."},
    ],
    # an undeclared tool, then a call missing its argument; the answer states one of two values
    [
        {"role": "assistant", "content": "", "tool_calls": [call("get_stock_price", symbol="X")]},
        {"role": "tool", "content": "error"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_current_weather")]},
        {"role": "tool", "content": "error"},
        {"role": "assistant", "content": "Probably 19 degrees."},
    ],
    # a malformed block left as text (never run): the trajectory never answers
    [{"role": "assistant", "content": '<tool_call>\n{"name": "get_current_weather", "arguments": {"loc'}],
    # the tool rounds ran out while it was still calling
    [
        {"role": "assistant", "content": "", "tool_calls": [WEATHER]},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER]},
    ],
    # a direct answer without calls
    "sunny, 19",
]


def test_agent_rewards_on_hand_made_trajectories():
    tools = json.dumps([DEMO_TOOL_SCHEMAS["get_current_weather"], DEMO_TOOL_SCHEMAS["get_current_time"]])
    columns = {"gt": [["19", "sunny"]] * 5, "tools": [tools] * 5, "completion_ids": [[1]] * 5, "trainer_state": None}
    assert gt_reward(completions=TRAJECTORIES, **columns) == [1.0, 0.5, 0.0, 0.0, 1.0]
    assert valid_calls_reward(completions=TRAJECTORIES, **columns) == [1.0, -1.0, -1.0, 1.0, 0.0]
    assert unfinished_penalty(completions=TRAJECTORIES, **columns) == [0.0, 0.0, -1.0, -1.0, 0.0]


def test_gt_reward_compares_numbers_with_a_relative_tolerance_and_falls_back_to_answer():
    replies = ["About 3.11 miles.", "3.2 miles", "1,234.5 yuan", "HELLO   World!"]
    gt = [["3.1069"], ["3.1069"], [1234.5], ["hello world"]]
    assert gt_reward(completions=replies, gt=gt) == [1.0, 0.0, 1.0, 1.0]
    assert gt_reward(completions=["Answer: 42"], gt=None, answer=["42"]) == [1.0]
    assert gt_reward(completions=["Answer: 42"]) == [None]
