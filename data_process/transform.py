"""The base of every JSONL-to-JSONL tool (clean, dedup, convert, sample, render, make_pairs): inputs expanded,
records validated, bad lines handled one way, the output written atomically, and the flags they share."""

from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from data_process.jsonl import atomic_write, dumps, expand_inputs, iter_records
from data_process.records import FORMATS, DataError, get_validator
from data_process.rejected import RejectedWriter, rejected_path_for


class InputRecord(NamedTuple):
    """A good input line: where it came from, its bytes as read (BOM and line ending stripped) and its record."""

    path: Path
    file_index: int
    line: int
    offset: int
    raw: bytes
    record: dict


class JsonlTransform:
    """Stream the good records of JSONL inputs into one output file, handling bad lines the same way in every tool.

    As a context manager: the output appears only if the block succeeds. Bad lines, and records the tool turns
    down through `reject`, raise DataError naming `file:line`, or with `skip_bad` go to `<output>.rejected.jsonl`.

        with JsonlTransform(inputs, output, fmt="sft", skip_bad=True, desc="clean") as job:
            for item in job.records():
                job.write(item.record)
        job.rejected  # number of lines written to the rejected file
    """

    def __init__(self, inputs, output, fmt=None, skip_bad=False, desc="read"):
        self.files = expand_inputs(inputs)
        self.output = Path(output)
        self.validate = get_validator(fmt)
        self.skip_bad = skip_bad
        self.desc = desc
        self._rejected = None

    def __enter__(self):
        with ExitStack() as stack:
            self._out = stack.enter_context(atomic_write(self.output, "wb"))
            if self.skip_bad:
                self._rejected = stack.enter_context(RejectedWriter(rejected_path_for(self.output)))
            self._close = stack.pop_all()
        return self

    def __exit__(self, *exc):
        return self._close.__exit__(*exc)

    @property
    def rejected(self):
        return self._rejected.count if self._rejected else 0

    def records(self):
        """Every good record of every input in order, with a progress bar per file."""
        for file_index, path in enumerate(self.files):
            lines = iter_records(path, self.validate, self._rejected)
            for line, offset, raw, record in tqdm(lines, desc=f"{self.desc} {path.name}", unit=" records"):
                yield InputRecord(path, file_index, line, offset, raw, record)

    def write(self, line):
        """Write a record as JSON, or bytes (an input line copied unchanged) as they are."""
        data = line if isinstance(line, bytes) else dumps(line).encode("utf-8")
        self._out.write(data + b"\n")

    def reject(self, item, reason):
        """Turn down a record the tool cannot use, as a bad input line would be."""
        if self._rejected is None:
            raise DataError(f"{item.path}:{item.line}: {reason}") from None
        self._rejected.add(item.path, item.line, str(reason), item.raw.decode("utf-8", errors="replace"))


def add_io_arguments(parser, formats=True):
    """The flags every data tool shares: --input, --output, --skip_bad and (optionally) --format."""
    parser.add_argument("--input", nargs="+", required=True, help="input JSONL files, folders or globs")
    parser.add_argument("--output", required=True, help="output path")
    parser.add_argument(
        "--skip_bad",
        action="store_true",
        help="write bad lines to <output>.rejected.jsonl with their reason instead of stopping at the first one",
    )
    if formats:
        parser.add_argument(
            "--format",
            default="auto",
            choices=("auto", *FORMATS),
            help="project format used to validate each record; auto detects it per record",
        )
    return parser
