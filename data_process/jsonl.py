"""Reading and writing JSONL: every bad line becomes a `DataError` naming `file:line` or, with `skip_bad`, a line in
a rejected file plus a logged count, so nothing is dropped silently; writes are atomic."""

import glob
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from data_process.records import DataError, get_validator, type_name
from data_process.rejected import RejectedWriter, rejected_path_for

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl",)


def iter_lines(path):
    """Yield (line_number, byte_offset, raw_bytes) for each line, with the UTF-8 BOM and CR/LF stripped."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            start = offset
            offset += len(raw)
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
                start += 3
            yield number, start, raw.rstrip(b"\r\n")


def _json_error(err):
    """json's message plus the column; some messages already end in "at" ("Invalid control character at")."""
    return f"{err.msg.removesuffix(' at')} at column {err.colno}"


def parse_line(path, number, raw, validate=None):
    """Decode and parse one JSONL line into a dict, raising DataError naming `path:number`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:{number}: invalid UTF-8 at byte {err.start}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{number}: malformed JSON: {_json_error(err)}") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, got {type_name(record)}")
    if validate is not None:
        try:
            validate(record)
        except ValueError as err:
            raise DataError(f"{path}:{number}: {err}") from None
    return record


def iter_records(path, validate=None, rejected=None):
    """Yield (line_number, byte_offset, raw_bytes, record) for the good lines of `path`.

    Blank lines carry no data and are passed over. Bad lines raise DataError, or go to `rejected`
    (a RejectedWriter) when one is given.
    """
    for number, offset, raw in iter_lines(path):
        if not raw.strip():
            continue
        try:
            record = parse_line(path, number, raw, validate)
        except DataError as err:
            if rejected is None:
                raise
            reason = str(err).split(": ", 1)[1]
            rejected.add(path, number, reason, raw.decode("utf-8", errors="replace"))
            continue
        yield number, offset, raw, record


def read_jsonl(path, validate=None, skip_bad=False, rejected_path=None):
    """Yield the records (dicts) of a JSONL file, validated by `validate(record)` if given.

    `validate` is a callable raising ValueError, or a format name (`auto`, `pretrain`, `sft`, `dpo`,
    `rl`, `prompt`). With `skip_bad`, bad lines go to `rejected_path` (a path appended to, or a
    RejectedWriter shared across files; default `<path>.rejected.jsonl`) and their count is logged.
    """
    if isinstance(validate, str):
        validate = get_validator(validate)
    if not skip_bad:
        for *_, record in iter_records(path, validate):
            yield record
        return
    own_writer = not isinstance(rejected_path, RejectedWriter)
    if own_writer:
        writer = RejectedWriter(rejected_path or rejected_path_for(path), append=rejected_path is not None)
    else:
        writer = rejected_path
    before = writer.count
    try:
        for *_, record in iter_records(path, validate, writer):
            yield record
    finally:
        if own_writer:
            writer.close()
    if writer.count > before:
        logger.warning("%s: skipped %d bad lines, written to %s", path, writer.count - before, writer.path)


def umask():
    """The process umask (read without changing it), for files created via mkstemp."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path, mode="w"):
    """Open a temporary file next to `path` and move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(record):
    return json.dumps(record, ensure_ascii=False)


def write_jsonl(path, records):
    """Write records atomically as UTF-8 JSONL (non-ASCII kept readable); returns the count."""
    count = 0
    with atomic_write(path) as handle:
        for record in records:
            handle.write(dumps(record) + "\n")
            count += 1
    return count


def expand_inputs(paths, suffixes=JSONL_SUFFIXES):
    """Expand files, folders (their files with `suffixes`, not recursive) and globs into a sorted file list.

    Folders are not searched recursively, so a corpus folder's `eval/` split stays out of training.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for entry in map(str, paths):
        if any(ch in entry for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(entry) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"no files match {entry}")
            files.extend(matches)
        elif Path(entry).is_dir():
            matches = sorted(p for p in Path(entry).iterdir() if p.is_file() and p.name.endswith(suffixes))
            matches = [p for p in matches if not p.name.endswith(".rejected.jsonl")]
            if not matches:
                raise FileNotFoundError(f"no {'/'.join(suffixes)} files in folder {entry}")
            files.extend(matches)
        elif Path(entry).is_file():
            files.append(Path(entry))
        else:
            raise FileNotFoundError(f"input not found: {entry}")
    return files
