"""convert maps each common format to the project formats and rejects bad records with file:line."""

import json
import re

import pytest

from data_process.convert import convert_jsonl, convert_record, main
from data_process.records import DataError

USER_ASSISTANT = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hello"}]


@pytest.mark.parametrize(
    "record, expected_format, expected",
    [
        ({"text": "plain"}, "pretrain", {"text": "plain"}),
        ({"conversations": USER_ASSISTANT}, "sft", {"conversations": USER_ASSISTANT}),
        (
            {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": ""}]},
            "prompt",
            {"prompt": [{"role": "user", "content": "你好"}]},
        ),
        (
            {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "无"}]},
            "prompt",
            {"prompt": [{"role": "user", "content": "你好"}]},
        ),
        (
            {"chosen": USER_ASSISTANT, "rejected": USER_ASSISTANT},
            "dpo",
            {"chosen": USER_ASSISTANT, "rejected": USER_ASSISTANT},
        ),
        (
            {"system": "S", "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "Hello"}]},
            "sft",
            {"conversations": [{"role": "system", "content": "S"}, *USER_ASSISTANT]},
        ),
        ({"instruction": "你好", "input": "", "output": "Hello"}, "sft", {"conversations": USER_ASSISTANT}),
        (
            {"instruction": "Translate", "input": "你好", "output": "Hello", "history": [["q", "a"]]},
            "sft",
            {
                "conversations": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "Translate\n你好"},
                    {"role": "assistant", "content": "Hello"},
                ]
            },
        ),
        ({"kind": "Translation", "input": "你好", "target": "Hello"}, "sft", {"conversations": USER_ASSISTANT}),
        ({"question": "你好", "answer": "Hello"}, "sft", {"conversations": USER_ASSISTANT}),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "你好"}]}, USER_ASSISTANT[1]]},
            "sft",
            {"conversations": USER_ASSISTANT},
        ),
        (
            {"prompt": "你好", "chosen": "Hello", "rejected": "Go away"},
            "dpo",
            {"chosen": USER_ASSISTANT, "rejected": [USER_ASSISTANT[0], {"role": "assistant", "content": "Go away"}]},
        ),
    ],
)
def test_each_source_format_maps_to_project_format(record, expected_format, expected):
    assert convert_record(record) == (expected_format, expected)


def test_prompt_answer_to_rl_and_sharegpt_function_call():
    assert convert_record({"query": "2+2?", "response": "4"}, target="rl") == (
        "rl",
        {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"},
    )
    turns = [
        {"from": "human", "value": "add 2 and 2"},
        {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 2, "b": 2}}'},
        {"from": "observation", "value": "4"},
        {"from": "gpt", "value": "4"},
    ]
    _fmt, converted = convert_record({"conversations": turns})
    assert converted["conversations"][1]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 2}}
    assert [m["role"] for m in converted["conversations"]] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"conversations": [{"from": "alien", "value": "x"}]}, "conversations\\[0\\].from': unknown role 'alien'"),
        ({"instruction": "x", "output": 3}, "field 'output': expected a string, got int"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text content parts"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
        ({"foo": 1}, "unknown source format"),
    ],
)
def test_bad_records_name_the_field(record, message):
    with pytest.raises(ValueError, match=message):
        convert_record(record)


def test_file_errors_name_file_line_and_skip_bad_keeps_going(tmp_path):
    source = tmp_path / "mixed.jsonl"
    rows = [
        {"instruction": "a", "output": "b"},
        {"conversations": [{"from": "alien", "value": "x"}]},
        {"input": "c", "target": "d"},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    output = tmp_path / "sft.jsonl"
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: field 'conversations\[0\]\.from'"):
        convert_jsonl([source], output)
    assert convert_jsonl([source], output, skip_bad=True) == {"sft": 2, "rejected": 1}
    rejected = json.loads((tmp_path / "sft.rejected.jsonl").read_text(encoding="utf-8"))
    assert rejected["line"] == 2 and "unknown role 'alien'" in rejected["reason"]


def test_one_output_holds_one_format(tmp_path):
    source = tmp_path / "mixed.jsonl"
    source.write_text('{"text": "t"}\n{"question": "q", "answer": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape("mixed.jsonl:2: converts to sft but earlier records gave pretrain")):
        convert_jsonl([source], tmp_path / "out.jsonl")


def test_cli(tmp_path, capsys):
    source = tmp_path / "alpaca.jsonl"
    source.write_text('{"instruction": "1+1?", "input": "", "output": "2"}\n', encoding="utf-8")
    output = tmp_path / "rl.jsonl"
    assert main(["--input", str(source), "--output", str(output), "--from", "prompt_answer", "--to", "rl"]) == 0
    expected = {"prompt": [{"role": "user", "content": "1+1?"}], "answer": "2"}
    assert json.loads(output.read_text(encoding="utf-8")) == expected
    assert "wrote 1 rl records" in capsys.readouterr().out


def test_target_mismatch_message_reads_naturally():
    """Guards "a alpaca record converts to sft": the message names the source without an article."""
    with pytest.raises(ValueError, match=r"^alpaca records convert to sft, not dpo$"):
        convert_record({"instruction": "x", "output": "y"}, target="dpo")
