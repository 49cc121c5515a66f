"""Bad input gives an error naming file:line and the problem, or goes to a rejected file with a count."""

import json
import subprocess
import sys

import pytest

from data_process.io import DataError, expand_inputs, read_jsonl, record_text, rejected_path_for, write_jsonl


def write_lines(path, lines, encoding="utf-8"):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode(encoding) for line in lines))
    return path


BAD_CASES = [
    ('{"text": "ok"}\n{"text": "broken"\n', "pretrain", r"bad\.jsonl:2: malformed JSON"),
    ('{"text": "ok"}\n{"text": 3}\n', "pretrain", r"bad\.jsonl:2: field 'text': expected a string, got int"),
    ('{"text": "   "}\n', "pretrain", r"bad\.jsonl:1: field 'text': empty text"),
    ('["text"]\n', "pretrain", r"bad\.jsonl:1: expected a JSON object, got list"),
    (
        '{"conversations": [{"role": "robot", "content": "hi"}]}\n',
        "sft",
        r"bad\.jsonl:1: field 'conversations\[0\]\.role': unknown role 'robot'",
    ),
    ('{"conversations": [{"role": "user", "content": "hi"}]}\n', "sft", r"bad\.jsonl:1: .*no assistant message"),
    (
        '{"chosen": [{"role": "user", "content": "q"}], "rejected": []}\n',
        "dpo",
        r"bad\.jsonl:1: field 'chosen': last message must be from the assistant",
    ),
    ('{"prompt": "2+2?", "answer": 4}\n', "rl", r"bad\.jsonl:1: field 'answer': expected a string, got int"),
    ('{"prompt": "2+2?"}\n', "rl", r"bad\.jsonl:1: field 'answer': missing"),
    ('{"question": "x"}\n', "auto", r"bad\.jsonl:1: unknown record format"),
]


@pytest.mark.parametrize("content, fmt, message", BAD_CASES)
def test_bad_lines_name_file_line_and_problem(tmp_path, content, fmt, message):
    path = write_lines(tmp_path / "bad.jsonl", [content])
    with pytest.raises(DataError, match=message):
        list(read_jsonl(path, validate=fmt))


def test_invalid_utf8_names_the_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"text": "ok"}\n', b'{"text": "\xff\xfe"}\n'])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid UTF-8"):
        list(read_jsonl(path, validate="pretrain"))


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [b"\xef\xbb\xbf", '{"text": "一"}\r\n', "\r\n", '{"text": "two"}\r\n'])
    assert [r["text"] for r in read_jsonl(path, validate="pretrain")] == ["一", "two"]


def test_skip_bad_writes_rejected_lines_with_reasons(tmp_path, caplog):
    path = write_lines(tmp_path / "mixed.jsonl", ['{"text": "a"}\n', "{oops\n", '{"text": ""}\n', '{"text": "b"}\n'])
    rejected = tmp_path / "out.rejected.jsonl"
    records = list(read_jsonl(path, validate="pretrain", skip_bad=True, rejected_path=rejected))
    assert [r["text"] for r in records] == ["a", "b"]
    rows = [json.loads(line) for line in rejected.read_text(encoding="utf-8").splitlines()]
    assert [(r["line"], r["raw"]) for r in rows] == [(2, "{oops"), (3, '{"text": ""}')]
    assert rows[0]["reason"].startswith("malformed JSON") and rows[1]["reason"] == "field 'text': empty text"
    assert "skipped 2 bad lines" in caplog.text


def test_record_text_covers_every_format():
    assert record_text({"text": "t"}) == "t"
    sft = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert record_text(sft) == "q\na"
    assert record_text({"prompt": [{"role": "user", "content": "q"}], "answer": "42"}) == "q\n42"


def test_write_jsonl_keeps_chinese_readable(tmp_path):
    path = tmp_path / "out.jsonl"
    assert write_jsonl(path, [{"text": "你好"}]) == 1
    assert path.read_text(encoding="utf-8") == '{"text": "你好"}\n'


def test_expand_inputs_folder_glob_and_missing(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "x.rejected.jsonl", "notes.txt"):
        (tmp_path / name).write_text('{"text": "x"}\n', encoding="utf-8")
    assert [p.name for p in expand_inputs(tmp_path)] == ["a.jsonl", "b.jsonl"]
    assert [p.name for p in expand_inputs(str(tmp_path / "?.jsonl"))] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        expand_inputs(tmp_path / "nope.jsonl")
    assert rejected_path_for("out/clean.jsonl").name == "clean.rejected.jsonl"


def test_cli_exits_nonzero_naming_file_line_then_skip_bad_succeeds(tmp_path):
    bad = write_lines(tmp_path / "bad.jsonl", ['{"text": "fine text"}\n', '{"text": 7}\n'])
    out = tmp_path / "clean.jsonl"
    command = [sys.executable, "-m", "data_process.clean", "--input", str(bad), "--output", str(out)]
    failed = subprocess.run(command, capture_output=True, text=True)
    assert failed.returncode == 1
    assert f"{bad}:2: field 'text': expected a string, got int" in failed.stderr
    assert not out.exists()
    skipped = subprocess.run([*command, "--skip-bad"], capture_output=True, text=True)
    assert skipped.returncode == 0, skipped.stderr
    assert "rejected 1 bad lines" in skipped.stdout
    assert out.read_text(encoding="utf-8") == '{"text": "fine text"}\n'
    assert json.loads((tmp_path / "clean.rejected.jsonl").read_text(encoding="utf-8"))["line"] == 2
