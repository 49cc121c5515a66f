"""load_text_dataset: local JSONL/parquet files, folders, globs, packed folders, and clear errors."""

import json
import re

import datasets
import pytest

from data_process.loading import load_text_dataset
from data_process.records import DataError


def count_lines(path):
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def test_jsonl_file_folder_and_glob(tiny_corpus):
    pretrain = tiny_corpus["pretrain"]
    dataset = load_text_dataset(pretrain)
    assert dataset.column_names == ["text"] and len(dataset) == count_lines(pretrain)
    assert dataset[0]["text"] == json.loads(pretrain.read_text(encoding="utf-8").split("\n", 1)[0])["text"]
    eval_pretrain = tiny_corpus["eval"] / "pretrain.jsonl"
    folder = load_text_dataset(str(tiny_corpus["eval"] / "pre*.jsonl"))
    assert len(folder) == count_lines(eval_pretrain)


def test_folder_reads_only_its_own_jsonl_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "一"}\n{"text": "二"}\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "three", "source": "x"}\n', encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text('{"text": "not me"}\n', encoding="utf-8")
    assert load_text_dataset(tmp_path)["text"] == ["一", "二", "three"]


def test_changed_file_is_reloaded_not_served_from_cache(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "old"}\n', encoding="utf-8")
    assert load_text_dataset(path)["text"] == ["old"]
    path.write_text('{"text": "new!"}\n', encoding="utf-8")
    assert load_text_dataset(path)["text"] == ["new!"]


def test_parquet_and_saved_dataset(tmp_path):
    source = datasets.Dataset.from_dict({"text": ["a", "b"], "id": [1, 2]})
    source.to_parquet(str(tmp_path / "part.parquet"))
    assert load_text_dataset(tmp_path / "part.parquet")["text"] == ["a", "b"]
    packed = datasets.Dataset.from_dict({"input_ids": [[1, 2]], "position_ids": [[0, 1]]})
    packed.save_to_disk(str(tmp_path / "packed"))
    assert load_text_dataset(tmp_path / "packed").column_names == ["input_ids", "position_ids"]


def test_clear_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("missing.jsonl")):
        load_text_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"no files match .*\*\.parquet"):
        load_text_dataset(str(tmp_path / "*.parquet"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("empty.jsonl is empty")):
        load_text_dataset(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'text': missing"):
        load_text_dataset(bad)
    datasets.Dataset.from_dict({"body": ["x"]}).to_parquet(str(tmp_path / "wrong.parquet"))
    with pytest.raises(ValueError, match=re.escape("wrong.parquet: no column 'text'")):
        load_text_dataset(tmp_path / "wrong.parquet")


def test_txt_files_load_one_document_per_line_like_the_tokenizer(tmp_path):
    """pretrain used to reject the .txt files that recipes/tokenizer.py accepts."""
    from data_process.loading import iter_texts

    (tmp_path / "a.txt").write_text("\ufefffirst line\n\n  \nsecond line\r\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "third"}\n', encoding="utf-8")
    assert load_text_dataset(tmp_path / "a.txt")["text"] == ["first line", "second line"]
    assert load_text_dataset(tmp_path)["text"] == ["first line", "second line", "third"]
    assert list(iter_texts(tmp_path)) == ["first line", "second line", "third"]


def test_missing_path_fails_at_once_naming_the_nearest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pretrain.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(
        FileNotFoundError, match=re.escape("dataset data/pretrian.jsonl: no such file or folder; did you mean")
    ):
        load_text_dataset("data/pretrian.jsonl")
