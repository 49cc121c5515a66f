"""Issue 17: a `--dataset_name` folder written by `DatasetDict.save_to_disk` failed ("Column to remove ['train'] not
in the dataset": no split was selected), and a folder in the Hub layout (`data/train-00000-of-00001.parquet`, what
`snapshot_download` gives, or `data/train-*.jsonl`) failed with "no .jsonl/.parquet files in folder". Each loader
(pretraining text, chats, preference pairs, RL prompts) must read the split asked for from both layouts."""

import json

import datasets
import pytest

from data_process.chat import load_chat_dataset, to_chat_row
from data_process.jsonl import read_jsonl
from data_process.loading import load_text_dataset
from data_process.sources import split_of
from recipes.training.preference import canonical_pair, read_pairs
from recipes.training.rl import read_rl_records

# Rows of each split: train holds the first TRAIN records of a corpus file, test the next TEST.
TRAIN, TEST = 6, 3


def rows_of(records: list[dict], split: str) -> list[dict]:
    return records[:TRAIN] if split == "train" else records[TRAIN : TRAIN + TEST]


def write_layout(records: list[dict], folder, layout: str) -> None:
    """The records' train and test splits as a saved DatasetDict or as a Hub snapshot (parquet or JSONL)."""
    splits = {split: rows_of(records, split) for split in ("train", "test")}
    if layout == "save_to_disk":
        datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()}).save_to_disk(folder)
        return
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("---\nconfigs: []\n---\n", encoding="utf-8")
    for split, rows in splits.items():
        if layout == "hub-parquet":
            datasets.Dataset.from_list(rows).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
        else:
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            (folder / "data" / f"{split}-00000-of-00001.jsonl").write_text(lines, encoding="utf-8")


LAYOUTS = ["save_to_disk", "hub-parquet", "hub-jsonl"]
SPLITS = ["train", "test"]


def corpus_records(tiny_corpus, kind: str, predicate=lambda record: True) -> list[dict]:
    return [record for record in read_jsonl(tiny_corpus[kind]) if predicate(record)][: TRAIN + TEST]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("split", SPLITS)
def test_text_loader_reads_the_split(tiny_corpus, tmp_path, layout, split):
    records = corpus_records(tiny_corpus, "pretrain")
    write_layout(records, tmp_path / "data", layout)
    loaded = load_text_dataset(tmp_path / "data", split=split)
    assert loaded["text"] == [record["text"] for record in rows_of(records, split)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("split", SPLITS)
def test_chat_loader_reads_the_split(tiny_corpus, tmp_path, layout, split):
    # Plain chats: a parquet column holds one schema, and tool calls' arguments differ per tool.
    records = corpus_records(tiny_corpus, "sft", lambda record: "tools" not in record)
    write_layout(records, tmp_path / "data", layout)
    loaded, skipped = load_chat_dataset(tmp_path / "data", split=split)
    assert skipped == 0
    assert loaded["messages"] == [to_chat_row(record)["messages"] for record in rows_of(records, split)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("split", SPLITS)
def test_preference_loader_reads_the_split(tiny_corpus, tmp_path, layout, split):
    records = corpus_records(tiny_corpus, "dpo")
    write_layout(records, tmp_path / "data", layout)
    assert read_pairs(str(tmp_path / "data"), split) == [canonical_pair(r) for r in rows_of(records, split)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("split", SPLITS)
def test_rl_loader_reads_the_split(tiny_corpus, tmp_path, layout, split):
    records = corpus_records(tiny_corpus, "rl")
    write_layout(records, tmp_path / "data", layout)
    loaded = read_rl_records(str(tmp_path / "data"), split)
    assert [(r["prompt"], r["answer"]) for r in loaded] == [(r["prompt"], r["answer"]) for r in rows_of(records, split)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_missing_split_names_the_ones_there(tiny_corpus, tmp_path, layout):
    write_layout(corpus_records(tiny_corpus, "pretrain"), tmp_path / "data", layout)
    with pytest.raises(ValueError, match=r"data: no split 'validation' \(splits: test, train\)$"):
        load_text_dataset(tmp_path / "data", split="validation")


def test_split_names_come_from_file_names_only_when_present(tmp_path):
    """A folder of files named by split gives the split's files; one without split names (the built-in corpus:
    pretrain.jsonl, sft.jsonl, ...) gives them all, as before."""
    assert [
        split_of(tmp_path / name) for name in ("train.jsonl", "test-00000-of-00002.parquet", "validation_1.jsonl")
    ] == [
        "train",
        "test",
        "validation",
    ]
    assert split_of(tmp_path / "pretrain.jsonl") is None and split_of(tmp_path / "trainer.jsonl") is None
    for name, text in (("train.jsonl", "fit"), ("test.jsonl", "held out")):
        (tmp_path / "own" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "own" / name).write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    assert load_text_dataset(tmp_path / "own")["text"] == ["fit"]
    assert load_text_dataset(tmp_path / "own", split="test")["text"] == ["held out"]
