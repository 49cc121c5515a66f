"""render writes each conversation as the chat-template text SFT trains on, from any chat format, tools included, and
turns down what is not a conversation with file:line."""

import json

import pytest

from data_process.records import DataError
from data_process.render import main, render_jsonl, render_record
from modeling_miniminds.tokenizer import load_tokenizer

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate arithmetic",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}
CONVERSATION = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def test_a_conversation_renders_as_the_template_writes_it(tokenizer):
    text = render_record({"conversations": CONVERSATION, "tools": [CALCULATOR]}, tokenizer)["text"]
    assert text == tokenizer.apply_chat_template(CONVERSATION, tools=[CALCULATOR], tokenize=False)
    assert '"name": "calculator"' in text and text.endswith("<|im_start|>assistant\n5<|im_end|>\n")


def test_other_chat_formats_render_like_the_projects(tokenizer):
    sharegpt = {"conversations": [{"from": "human", "value": "2+3?"}, {"from": "gpt", "value": "5"}]}
    openai = {"messages": CONVERSATION}
    expected = render_record({"conversations": CONVERSATION}, tokenizer)
    assert render_record(sharegpt, tokenizer) == render_record(openai, tokenizer) == expected


def test_records_that_are_not_chats_name_file_and_line_or_are_set_aside(tokenizer, tmp_path):
    source = tmp_path / "mixed.jsonl"
    rows = [{"conversations": CONVERSATION}, {"text": "plain text"}, {"messages": CONVERSATION}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    output = tmp_path / "chats.jsonl"
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: "):
        render_jsonl([source], output, tokenizer)
    assert not output.exists()  # nothing half-written
    assert render_jsonl([source], output, tokenizer, skip_bad=True) == (2, 1)
    assert [json.loads(line)["text"] for line in output.read_text(encoding="utf-8").splitlines()] == [
        render_record(rows[0], tokenizer)["text"]
    ] * 2
    assert json.loads((tmp_path / "chats.rejected.jsonl").read_text(encoding="utf-8"))["line"] == 2


def test_cli_writes_the_text_and_reports_errors_in_one_line(tiny_tokenizer_dir, tmp_path, capsys):
    source = tmp_path / "sft.jsonl"
    source.write_text(json.dumps({"conversations": CONVERSATION}) + "\n", encoding="utf-8")
    output = tmp_path / "chats.jsonl"
    assert main(["--input", str(source), "--tokenizer", str(tiny_tokenizer_dir), "--output", str(output)]) == 0
    assert "wrote 1 conversations as text" in capsys.readouterr().out
    assert main(["--input", str(source), "--tokenizer", str(tmp_path / "none"), "--output", str(output)]) == 1
    assert capsys.readouterr().err == f"error: tokenizer {tmp_path / 'none'}: no such file or folder\n"
