"""sample: seeded, by count, fraction or bytes, lines copied unchanged and in input order."""

import json

import pytest

from data_process.sample import choose, main, sample_jsonl


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"text": f"文档 {i} " + "x" * (i % 7)}) + "\n" for i in range(200)))
    return path


def test_count_is_seeded_ordered_and_unchanged(source, tmp_path):
    lines = source.read_text().splitlines()
    first, again, other = (tmp_path / f"{n}.jsonl" for n in ("a", "b", "c"))
    assert sample_jsonl([source], first, count=20, seed=1)["written"] == 20
    sample_jsonl([source], again, count=20, seed=1)
    sample_jsonl([source], other, count=20, seed=2)
    picked = first.read_text().splitlines()
    assert picked == again.read_text().splitlines() != other.read_text().splitlines()
    assert picked == [line for line in lines if line in set(picked)]


def test_bytes_budget_is_respected_and_nearly_filled(source, tmp_path):
    output = tmp_path / "out.jsonl"
    budget = source.stat().st_size // 3
    counts = sample_jsonl([source], output, max_bytes=budget, seed=0)
    size = output.stat().st_size
    assert size == counts["bytes"] and budget - 100 < size <= budget


def test_fraction_and_argument_checks(source, tmp_path):
    assert sample_jsonl([source], tmp_path / "f.jsonl", fraction=0.25)["written"] == 50
    with pytest.raises(ValueError, match="exactly one of"):
        choose([1, 2, 3], count=1, fraction=0.5)
    with pytest.raises(ValueError, match="--fraction must be between 0 and 1, got 2"):
        choose([1, 2, 3], fraction=2)


def test_cli_by_mb_with_bom_and_crlf_input(tmp_path, capsys):
    source = tmp_path / "crlf.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + b"".join(b'{"text": "line %d"}\r\n' % i for i in range(10)))
    output = tmp_path / "out.jsonl"
    assert main(["--input", str(source), "--output", str(output), "--mb", "1", "--seed", "0"]) == 0
    assert output.read_bytes() == b"".join(b'{"text": "line %d"}\n' % i for i in range(10))
    assert "wrote 10 of 10 records" in capsys.readouterr().out


def test_cli_bad_line_exit_status(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "ok"}\n{"text": ""}\n', encoding="utf-8")
    assert main(["--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--n", "1"]) == 1
    assert f"{source}:2: field 'text': empty text" in capsys.readouterr().err


def test_skip_bad_counts_rejected_lines_and_copies_good_ones_unchanged(tmp_path):
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b'{"text": "a"}\n{"text": ""}\n{"text":  "b"}\n')
    output = tmp_path / "out.jsonl"
    counts = sample_jsonl([source], output, fraction=1.0, skip_bad=True)
    assert counts == {"input": 2, "written": 2, "bytes": 14 + 15, "rejected": 1}  # each line plus "\n"
    assert output.read_bytes() == b'{"text": "a"}\n{"text":  "b"}\n'
    assert json.loads((tmp_path / "out.rejected.jsonl").read_text(encoding="utf-8"))["line"] == 2
