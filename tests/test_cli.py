"""The shared command line: one `error:` line for a user's mistake (a traceback with MINIMINDS_DEBUG=1), a bug
keeps its traceback, and one suggester answers every misspelling."""

import pytest

from modeling_miniminds.cli import FlagParser, command_main, did_you_mean, nearest


@command_main
def failing_main(error):
    raise error


def test_user_mistake_is_one_error_line_and_status_1(capsys, monkeypatch):
    monkeypatch.delenv("MINIMINDS_DEBUG", raising=False)
    assert failing_main(FileNotFoundError("input not found: a.jsonl")) == 1
    assert capsys.readouterr().err == "error: input not found: a.jsonl\n"


def test_exit_option_raises_status_1(capsys):
    with pytest.raises(SystemExit) as caught:
        command_main(exit=True)(failing_main.__wrapped__)(ValueError("bad value"))
    assert caught.value.code == 1 and capsys.readouterr().err == "error: bad value\n"


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch):
    with pytest.raises(KeyError):
        failing_main(KeyError("a bug"))
    monkeypatch.setenv("MINIMINDS_DEBUG", "1")
    with pytest.raises(ValueError, match="bad value"):
        failing_main(ValueError("bad value"))


def test_one_suggester_for_flags_keys_and_paths():
    assert nearest("lerning_rate", ["learning_rate", "seed"]) == "learning_rate"
    assert nearest("zzz", ["learning_rate", "seed"]) is None
    assert did_you_mean("pretrain-tiy", ["pretrain-tiny"], cutoff=0.75, prefix="runs/") == (
        "; did you mean runs/pretrain-tiny?"
    )
    assert did_you_mean("zzz", ["pretrain-tiny"]) == ""


def test_subcommand_parsers_take_both_spellings():
    parser = FlagParser(prog="tool")
    sub = parser.add_subparsers(dest="command", parser_class=FlagParser)
    sub.add_parser("push").add_argument("--repo_id")
    assert parser.parse_args(["push", "--repo-id", "me/model"]).repo_id == "me/model"
