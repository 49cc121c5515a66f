"""Dedup finds planted exact and near duplicates, keeps distinct texts, and names each removed original."""

import json
import random

import pytest

from data_process import dedup, text
from data_process.dedup import DedupConfig, dedup_jsonl, main

WORDS = [
    "river",
    "mountain",
    "quiet",
    "library",
    "orange",
    "planet",
    "window",
    "garden",
    "music",
    "teacher",
    "thunder",
    "lantern",
    "bridge",
    "silver",
    "forest",
    "engine",
    "harbor",
    "pencil",
    "candle",
    "meadow",
]
ZH = "春夏秋冬山水花鸟风云雨雪日月星辰江河湖海天地人和东南西北古今中外上下左右"


def distinct_docs(count, seed=0):
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        if i % 2:
            docs.append("".join(rng.choice(ZH) for _ in range(80)))
        else:
            docs.append(" ".join(rng.choice(WORDS) for _ in range(60)))
    return docs


def planted(tmp_path):
    """40 distinct docs plus: a case/space variant (exact), one-word edits (near) in English and Chinese."""
    docs = distinct_docs(40)
    rows = [{"text": d} for d in docs]
    rows.append({"text": "  " + docs[0].upper().replace(" ", "   ") + " "})  # line 41 duplicates line 1
    rows.append({"text": docs[2].replace(docs[2].split()[30], "zebra", 1)})  # line 42 near line 3
    rows.append({"text": docs[3][:40] + "龙" + docs[3][41:]})  # line 43 near line 4
    rows.append({"text": docs[4] + " appendix"})  # line 44 near line 5
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path, rows


@pytest.mark.parametrize("num_proc", [1, 2])
def test_planted_duplicates_removed_distinct_kept(tmp_path, num_proc):
    path, _rows = planted(tmp_path)
    output, dups = tmp_path / "out.jsonl", tmp_path / "dups.jsonl"
    counts = dedup_jsonl([path], output, DedupConfig(num_proc=num_proc, batch_size=8), duplicates_path=dups)
    assert counts == {"input": 44, "kept": 40, "exact": 1, "near": 3, "rejected": 0}
    assert output.read_text(encoding="utf-8").splitlines() == path.read_text(encoding="utf-8").splitlines()[:40]
    found = [json.loads(line) for line in dups.read_text(encoding="utf-8").splitlines()]
    assert [(d["line"], d["kind"], d["duplicate_of"]["line"]) for d in found] == [
        (41, "exact", 1),
        (42, "near", 3),
        (43, "near", 4),
        (44, "near", 5),
    ]
    assert all(d["similarity"] >= 0.8 for d in found)


def test_exact_only_and_threshold(tmp_path):
    path, _ = planted(tmp_path)
    assert dedup_jsonl([path], tmp_path / "a.jsonl", DedupConfig(near=False))["kept"] == 43
    assert dedup_jsonl([path], tmp_path / "b.jsonl", DedupConfig(threshold=0.97))["near"] == 0


def test_duplicates_across_files(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"text": "same words in both files here"}\n', encoding="utf-8")
    second.write_text('{"text": "other text"}\n{"text": "Same words in both files here."}\n', encoding="utf-8")
    counts = dedup_jsonl([first, second], tmp_path / "out.jsonl", duplicates_path=tmp_path / "d.jsonl")
    assert counts["kept"] == 2 and counts["near"] == 1
    entry = json.loads((tmp_path / "d.jsonl").read_text(encoding="utf-8"))
    assert entry["file"] == str(second) and entry["duplicate_of"] == {"file": str(first), "line": 1}


def test_bad_parameters_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"threshold must be between 0 and 1 \(exclusive\), got 1.5"):
        DedupConfig(threshold=1.5)
    with pytest.raises(ValueError, match="num_perm must be at least 16, got 4"):
        DedupConfig(num_perm=4)
    with pytest.raises(ValueError, match=r"threshold=0.99 with num_perm=128: .*bands"):
        dedup_jsonl([], tmp_path / "out.jsonl", DedupConfig(threshold=0.99))


def test_cli(tmp_path, capsys):
    path, _ = planted(tmp_path)
    assert main(["--input", str(path), "--output", str(tmp_path / "o.jsonl"), "--num_proc", "1"]) == 0
    assert "kept 40 of 44 records" in capsys.readouterr().out


def test_cjk_range_is_the_shared_one():
    """Guards a second copy of the CJK range drifting from data_process.text's: each ideograph is one token."""
    assert dedup.CJK is text.CJK
    assert dedup.TOKEN.findall("㐀豈 ab1 中") == ["㐀", "豈", "ab1", "中"]
