"""One loader for pretraining text: local JSONL/parquet/.txt files, folders, globs, packed datasets or Hub ids."""

import logging
from pathlib import Path

import datasets

from data_process.chat import template_text
from data_process.jsonl import expand_inputs, iter_records, read_jsonl
from data_process.records import DataError, data_error_in, detect_format, get_validator, record_text, validate_pretrain
from data_process.sources import resolve_source

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".jsonl", ".txt")


def _file_texts(path: Path, render_chats: bool):
    if path.suffix == ".txt":
        with open(path, encoding="utf-8-sig") as handle:
            yield from (line.rstrip("\r\n") for line in handle if line.strip())
        return
    for number, _, _, record in iter_records(path, get_validator("auto")):
        if not (render_chats and detect_format(record) == "sft"):
            yield record_text(record)
            continue
        try:
            yield template_text(record)
        except ValueError as err:
            raise DataError(f"{path}:{number}: {err}") from None


def iter_texts(inputs, max_docs=None, render_chats=False):
    """Stream the text of every record (any project format) of JSONL files, or every non-empty line of .txt
    files; `inputs` are files, folders or globs, as for the data tools. With `render_chats`, a conversation's text
    is its chat-template layout (`data_process.chat.template_text`), what a tokenizer should learn from."""
    count = 0
    for path in expand_inputs(inputs, suffixes=TEXT_SUFFIXES):
        for text in _file_texts(path, render_chats):
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


def load_text_dataset(name_or_path, split="train", text_column="text"):
    """Return a `datasets.Dataset` for pretraining.

    Local JSONL goes through data_process.jsonl validation (bad lines raise DataError naming file:line) and
    keeps only `text_column`; parquet keeps its columns. A packed folder (from data_process.pack, with
    `input_ids`) is returned as is. `split` selects the split of a saved DatasetDict, of a folder whose files are
    named by split (the Hub layout) or of a Hub dataset (see data_process.sources).
    """
    source = resolve_source(name_or_path, split, line_suffixes=TEXT_SUFFIXES)
    name = source.name
    dataset = source.table if source.table is not None else _from_jsonl(source.files, text_column)
    if len(dataset) == 0:
        raise ValueError(f"dataset {name} is empty")
    if "input_ids" not in dataset.column_names and text_column not in dataset.column_names:
        raise ValueError(f"dataset {name}: no column '{text_column}' (columns: {', '.join(dataset.column_names)})")
    logger.info("loaded %d rows from %s", len(dataset), name)
    return dataset
