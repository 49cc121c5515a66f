"""Cleaning: each normalisation rule, each filter, and a report of what every rule changed or removed."""

import json

import pytest

from data_process import clean, text
from data_process.clean import CleanConfig, clean_jsonl, clean_record, main, normalize_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("你好,世界!这是(测试)。", "你好，世界！这是（测试）。"),  # half-width after CJK becomes full-width
        ("Ｈｅｌｌｏ，ｗｏｒｌｄ！", "Hello,world!"),  # full-width Latin becomes half-width (NFKC)
        ("答案:8", "答案：8"),
        ("price: 3.5 dollars, ok?", "price: 3.5 dollars, ok?"),
        ("a\u200bb\u0007c\r\nd", "abc\nd"),
        ("3 乘以 5 等于 15。12 加 1 等于 13,对吗?", "3 乘以 5 等于 15。12 加 1 等于 13，对吗？"),  # digits before
        ("共有 1,000 人，Total: 1,000.", "共有 1,000 人，Total: 1,000."),  # thousands separators stay
        ("1, 2, 3", "1, 2, 3"),  # no letter nearby: unchanged
        ("line  \n\n\n\n\nnext\u3000word ", "line\n\nnext word"),
    ],
)
def test_normalisation(raw, expected):
    assert normalize_text(raw, CleanConfig()) == expected


def test_rules_can_be_switched_off():
    config = CleanConfig(nfkc=False, punctuation=False)
    assert normalize_text("Ｈｅｌｌｏ,世界", config) == "Ｈｅｌｌｏ,世界"
    assert normalize_text("Hello，world！你好,世界", CleanConfig(nfkc=False)) == "Hello,world!你好，世界"


def test_filters_and_messages_are_cleaned():
    config = CleanConfig(min_chars=5, max_chars=50, min_text_ratio=0.5)
    assert clean_record({"text": "hi"}, config) == (None, "min_chars")
    assert clean_record({"text": "x" * 51}, config) == (None, "max_chars")
    assert clean_record({"text": "1234 5678 !!!! ????"}, config) == (None, "min_text_ratio")
    sft = {"conversations": [{"role": "user", "content": "多少?"}, {"role": "assistant", "content": "答案:八"}]}
    cleaned, reason = clean_record(sft, CleanConfig())
    assert reason is None
    assert [m["content"] for m in cleaned["conversations"]] == ["多少？", "答案：八"]
    assert [m["role"] for m in cleaned["conversations"]] == ["user", "assistant"]


def test_report_counts_changes_and_removals(tmp_path):
    source = tmp_path / "raw.jsonl"
    rows = [{"text": "你好,世界"}, {"text": "ok text"}, {"text": "!!"}, {"text": "Ｗｉｄｅ text"}]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    removed = tmp_path / "removed.jsonl"
    config = CleanConfig(min_chars=3)
    report = clean_jsonl([source], tmp_path / "out.jsonl", config, removed_path=removed)
    assert report == {
        "kept": 3,
        "removed": {"min_chars": 1},
        "changed": {"nfkc": 1, "punctuation": 1},
        "rejected": 0,
    }
    assert json.loads(removed.read_text(encoding="utf-8")) == {"reason": "min_chars", "record": {"text": "!!"}}
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["你好，世界", "ok text", "Wide text"]


def test_cli_prints_the_report(tiny_corpus, tmp_path, capsys):
    output = tmp_path / "clean.jsonl"
    assert main(["--input", str(tiny_corpus["sft"]), "--output", str(output), "--min_chars", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kept ") and "clean.jsonl" in out
    assert len(output.read_text(encoding="utf-8").splitlines()) == 300


def test_cjk_range_is_the_shared_one():
    """Guards a second copy of the CJK range drifting from data_process.text's."""
    assert clean.IS_CJK is text.IS_CJK
    assert normalize_text("㐀,豈!", CleanConfig()) == "㐀，豈！"  # Extension A and Compatibility ideographs
