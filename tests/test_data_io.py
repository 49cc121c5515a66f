"""Bad input gives an error naming file:line and the problem, or goes to a rejected file with a count."""

import importlib
import json
import logging
import subprocess
import sys

import pytest

from data_process import clean, convert, dedup, sample
from data_process.jsonl import expand_inputs, read_jsonl, write_jsonl
from data_process.records import DataError, record_text
from data_process.rejected import rejected_path_for
from data_process.transform import JsonlTransform, add_io_arguments
from modeling_miniminds.cli import FlagParser, setup_logging


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
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
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
    assert f"rejected 1 bad line -> {tmp_path / 'clean.rejected.jsonl'}" in skipped.stdout
    assert out.read_text(encoding="utf-8") == '{"text": "fine text"}\n'
    assert json.loads((tmp_path / "clean.rejected.jsonl").read_text(encoding="utf-8"))["line"] == 2


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": }', "Expecting value at column 10"),
        ('{"text": "a",}', "Expecting property name enclosed in double quotes at column 14"),
        ('{"text": "a\tb"}', "Invalid control character at column 12"),
        ('{"text": "abc', "Unterminated string starting at column 10"),
    ],
)
def test_malformed_json_message_reads_naturally(tmp_path, line, message):
    """Guards "Invalid control character at at column 12": some json messages already end in "at"."""
    path = write_lines(tmp_path / "bad.jsonl", ['{"text": "ok"}\n', "\n", line + "\n"])
    with pytest.raises(DataError) as caught:
        list(read_jsonl(path))
    assert str(caught.value) == f"{path}:3: malformed JSON: {message}"


def test_transform_copies_bytes_writes_records_and_rejects(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", [b"\xef\xbb\xbf", '{"text":  "kept as is"}\r\n', '{"text": "x"}\n'])
    output = tmp_path / "out.jsonl"
    with JsonlTransform([source], output, fmt="pretrain", skip_bad=True) as job:
        first, second = job.records()
        job.write(first.raw)
        job.write({"text": "你好"})
        job.reject(second, "too short")
    assert output.read_bytes() == '{"text":  "kept as is"}\n{"text": "你好"}\n'.encode()
    assert (first.file_index, first.line, first.offset) == (0, 1, 3)
    assert job.rejected == 1
    rejected = json.loads(rejected_path_for(output).read_text(encoding="utf-8"))
    assert (rejected["line"], rejected["reason"], rejected["raw"]) == (2, "too short", '{"text": "x"}')
    with pytest.raises(DataError, match=r"in\.jsonl:2: too short"), JsonlTransform([source], output) as job:
        for item in job.records():
            job.write(item.raw)
            if item.line == 2:
                job.reject(item, "too short")
    assert output.read_bytes().startswith(b'{"text":  "kept'), "a failed transform leaves the old output in place"


def spelling_parser():
    parser = add_io_arguments(FlagParser(description="test tool"))
    parser.add_argument("--min_chars", type=int, default=1)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--num_proc", type=int)
    return parser


def test_flags_accept_dashes_and_underscores_and_help_shows_underscores():
    required = ["--input", "a.jsonl", "--output", "b.jsonl"]
    dashed = spelling_parser().parse_args([*required, "--skip-bad", "--min-chars", "5", "--num-proc=3"])
    underscored = spelling_parser().parse_args([*required, "--skip_bad", "--min_chars", "5", "--num_proc=3"])
    assert dashed == underscored and (dashed.skip_bad, dashed.min_chars, dashed.num_proc) == (True, 5, 3)
    help_text = spelling_parser().format_help()
    assert "--skip_bad" in help_text and "--skip-bad" not in help_text and "--min-chars" not in help_text
    assert "can also be written --flag-name" in help_text


def error_lines(text):
    return [line for line in text.splitlines() if "error:" in line]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--skip_bda"], "unrecognized argument --skip_bda; did you mean --skip_bad?"),
        (["--min-chrs", "3"], "unrecognized arguments --min-chrs 3; did you mean --min_chars?"),
        (["--zzz"], "unrecognized argument --zzz"),
    ],
)
def test_unknown_flag_names_the_nearest_one(capsys, argv, expected):
    with pytest.raises(SystemExit) as caught:
        spelling_parser().parse_args(["--input", "a.jsonl", "--output", "b.jsonl", *argv])
    assert caught.value.code == 2
    assert error_lines(capsys.readouterr().err) == [f"{spelling_parser().prog}: error: {expected}"]


TOOLS = {"clean": clean.main, "dedup": dedup.main, "convert": convert.main, "sample": sample.main}
TOOL_ARGS = {"sample": ["--n", "1"], "dedup": ["--num_proc", "1"], "pack": ["--tokenizer", "tok"]}


def run_tool(name, argv):
    """Exit status of a data CLI run in-process, argparse's SystemExit included."""
    try:
        return TOOLS[name]([*argv, *TOOL_ARGS.get(name, [])])
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("name", TOOLS)
def test_user_mistakes_give_one_error_line_and_no_traceback(tmp_path, capsys, name):
    good = write_lines(tmp_path / "good.jsonl", ['{"text": "a fine line"}\n'])
    bad = write_lines(tmp_path / "bad.jsonl", ['{"text": "a fine line"}\n', '{"text": }\n'])
    output = ["--output", str(tmp_path / "out.jsonl")]
    cases = [
        (["--input", str(tmp_path / "missing.jsonl"), *output], 1, f"error: input not found: {tmp_path}/missing.jsonl"),
        (["--input", str(bad), *output], 1, f"error: {bad}:2: malformed JSON: Expecting value at column 10"),
        (["--input", str(good), *output, "--skip_bda"], 2, "error: unrecognized argument --skip_bda; did you mean"),
    ]
    for argv, status, message in cases:
        assert run_tool(name, argv) == status
        err = capsys.readouterr().err
        (line,) = error_lines(err)
        assert message in line and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("name", [*TOOLS, "pack"])
def test_every_flag_of_every_tool_takes_both_spellings(name):
    parser = importlib.import_module(f"data_process.{name}").make_parser()
    base = ["--input", "a.jsonl", "--output", "b.jsonl", *TOOL_ARGS.get(name, [])]
    for action in parser._actions:
        for flag in action.option_strings:
            if "_" not in flag:
                continue
            value = [] if action.nargs == 0 else [str((action.choices or ["1"])[0])]
            dashed = "--" + flag[2:].replace("_", "-")
            assert parser.parse_args([*base, dashed, *value]) == parser.parse_args([*base, flag, *value]), flag


def test_setup_logging_is_idempotent():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        setup_logging()
        setup_logging(logging.WARNING)
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        record = logging.LogRecord("data_process.clean", logging.INFO, __file__, 1, "kept 3", None, None)
        assert root.handlers[0].format(record).endswith(" INFO data_process.clean: kept 3")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
