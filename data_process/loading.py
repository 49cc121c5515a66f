"""One loader for pretraining text: local JSONL/parquet/.txt files, folders, globs, packed datasets or Hub ids."""

import logging
import os
from pathlib import Path

import datasets

from data_process.jsonl import expand_inputs, read_jsonl
from data_process.records import data_error_in, record_text, validate_pretrain
from modeling_miniminds.cli.paths import check_name_or_path

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".parquet", ".txt")
TEXT_SUFFIXES = (".jsonl", ".txt")


def is_saved_dataset(path):
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (e.g. by data_process.pack)."""
    path = Path(path)
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _file_texts(path: Path):
    if path.suffix == ".txt":
        with open(path, encoding="utf-8-sig") as handle:
            yield from (line.rstrip("\r\n") for line in handle if line.strip())
    else:
        yield from (record_text(record) for record in read_jsonl(path, validate="auto"))


def iter_texts(inputs, max_docs=None):
    """Stream the text of every record (any project format) of JSONL files, or every non-empty line of .txt
    files; `inputs` are files, folders or globs, as for the data tools."""
    count = 0
    for path in expand_inputs(inputs, suffixes=TEXT_SUFFIXES):
        for text in _file_texts(path):
            yield text
            count += 1
            if max_docs and count >= max_docs:
                return


def _has_lines(path):
    with open(path, "rb") as handle:
        return any(line.strip() not in (b"", b"\xef\xbb\xbf") for line in handle)


def _from_jsonl(files, text_column):
    if not any(_has_lines(p) for p in files):
        raise ValueError(f"dataset {', '.join(map(str, files))} is empty")
    # The file size and mtime go into the generator arguments so a changed file never hits a stale cache.
    stamps = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    try:
        return datasets.Dataset.from_generator(
            _stamped_rows,
            gen_kwargs={"stamps": stamps, "text_column": text_column},
            features=datasets.Features({text_column: datasets.Value("string")}),
            split="train",
        )
    except datasets.exceptions.DatasetGenerationError as err:
        raise (data_error_in(err) or err) from err


def _stamped_rows(stamps, text_column):
    for path, *_ in stamps:
        if path.endswith(".txt"):
            yield from ({text_column: text} for text in iter_texts([path]))
            continue
        for record in read_jsonl(path, validate=lambda r: validate_pretrain(r, text_column)):
            yield {text_column: record[text_column]}


def _from_parquet(files, text_column):
    dataset = datasets.load_dataset("parquet", data_files=[str(p) for p in files], split="train")
    if text_column not in dataset.column_names:
        raise ValueError(f"{files[0]}: no column '{text_column}' (columns: {', '.join(dataset.column_names)})")
    return dataset


def _load_saved(path, split):
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path}: no split '{split}' (splits: {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded


def _local_files(name):
    files = expand_inputs([name], suffixes=DATA_SUFFIXES)
    kinds = {p.suffix for p in files}
    if kinds - {".jsonl", ".txt"} and len(kinds) > 1:
        raise ValueError(f"{name}: expected .jsonl/.txt files or only .parquet files, got {', '.join(sorted(kinds))}")
    return files, ".parquet" if kinds == {".parquet"} else ".jsonl"


def load_text_dataset(name_or_path, split="train", text_column="text"):
    """Return a `datasets.Dataset` for pretraining.

    Local JSONL goes through data_process.jsonl validation (bad lines raise DataError naming file:line) and
    keeps only `text_column`; parquet keeps its columns. A packed folder (from data_process.pack, with
    `input_ids`) is returned as is. Local files form one dataset whatever `split` says; `split` selects the
    split of a saved DatasetDict or a Hub dataset (Hub ids need network access).
    """
    name = os.path.expanduser(str(name_or_path))
    is_glob = any(ch in name for ch in "*?[")
    if not is_glob:
        check_name_or_path(name, "dataset")
    if is_saved_dataset(name):
        dataset = _load_saved(name, split)
    elif is_glob or Path(name).exists():
        files, kind = _local_files(name)
        dataset = _from_parquet(files, text_column) if kind == ".parquet" else _from_jsonl(files, text_column)
    else:
        dataset = datasets.load_dataset(name, split=split)
    if len(dataset) == 0:
        raise ValueError(f"dataset {name} is empty")
    if "input_ids" not in dataset.column_names and text_column not in dataset.column_names:
        raise ValueError(f"dataset {name}: no column '{text_column}' (columns: {', '.join(dataset.column_names)})")
    logger.info("loaded %d rows from %s", len(dataset), name)
    return dataset
