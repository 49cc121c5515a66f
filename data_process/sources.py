"""Where a `--dataset_name` points, resolved once for every loader (pretraining text, chats, preference pairs, RL
prompts): local JSONL or .txt files, which a loader reads line by line so that a bad line is named `file:line`, or
a table (`datasets.Dataset`): parquet files, one split of a `save_to_disk` folder, or one split of a Hub dataset.

A folder in the Hub layout (what `huggingface_hub.snapshot_download` writes: `data/train-00000-of-00001.parquet`,
`data/test-*.jsonl`), or whose own files are named by split (`train.jsonl`, `validation.jsonl`), gives the files of
the split asked for; a folder whose files carry no split name gives them all.

    source = resolve_source("data/hub-snapshot", split="train")
    rows = source.table if source.table is not None else read(source.files)
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from data_process.jsonl import expand_inputs
from modeling_miniminds.cli.paths import check_name_or_path

# The split names `datasets` gives a Hub dataset's files.
SPLIT_NAMES = ("train", "test", "validation")
# Where a Hub snapshot keeps its data files.
HUB_DATA_FOLDER = "data"


@dataclass(frozen=True)
class Source:
    """The rows of one split: `files` to read line by line, or a `table` already loaded."""

    name: str
    files: tuple[Path, ...] = ()
    table: datasets.Dataset | None = None


def is_saved_dataset(path) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (e.g. by data_process.pack)."""
    path = Path(path)
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def load_saved(path, split: str) -> datasets.Dataset:
    """A `save_to_disk` folder: the dataset itself, or the `split` of a DatasetDict."""
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path}: no split '{split}' (splits: {', '.join(sorted(loaded))})")
        loaded = loaded[split]
    return loaded


def split_of(path: Path) -> str | None:
    """The split a file name states (`train.jsonl`, `train-00000-of-00001.parquet`, `test_1.jsonl`), else None."""
    head = re.split(r"[-_.]", path.name, maxsplit=1)[0]
    return head if head in SPLIT_NAMES else None


def folder_files(folder: Path, split: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The data files of `folder` for `split`: its own, else those of its `data/` subfolder (the Hub layout); when
    any of them is named by split, only those of `split`."""
    hub_data = folder / HUB_DATA_FOLDER
    own = any(p.is_file() and p.name.endswith(suffixes) for p in folder.iterdir())
    files = expand_inputs([folder if own or not hub_data.is_dir() else hub_data], suffixes=suffixes)
    splits = {path: split_of(path) for path in files}
    named = sorted({name for name in splits.values() if name})
    if not named:
        return files
    chosen = [path for path, name in splits.items() if name == split]
    if not chosen:
        raise ValueError(f"{folder}: no split '{split}' (splits: {', '.join(named)})")
    return chosen


def resolve_source(name_or_path, split: str = "train", line_suffixes: tuple[str, ...] = (".jsonl",)) -> Source:
    """The rows of `split` that `name_or_path` points to. Local files with `line_suffixes` come back as files;
    parquet files (never mixed with those), saved datasets and Hub ids as a table. Hub ids need network access."""
    name = os.path.expanduser(str(name_or_path))
    is_glob = any(ch in name for ch in "*?[")
    if not is_glob:
        check_name_or_path(name, "dataset")
    if is_saved_dataset(name):
        return Source(name, table=load_saved(name, split))
    if not (is_glob or Path(name).exists()):
        return Source(name, table=datasets.load_dataset(name, split=split))
    suffixes = (*line_suffixes, ".parquet")
    if Path(name).is_dir():
        files = folder_files(Path(name), split, suffixes)
    else:
        files = expand_inputs([name], suffixes=suffixes)
    kinds = {path.suffix for path in files}
    if kinds == {".parquet"}:
        table = datasets.load_dataset("parquet", data_files=[str(path) for path in files], split="train")
        return Source(name, table=table)
    if ".parquet" in kinds:
        expected = "/".join(line_suffixes)
        raise ValueError(f"{name}: expected {expected} files or only .parquet files, got {', '.join(sorted(kinds))}")
    return Source(name, files=tuple(files))
