"""JSONL reading, validation and writing shared by every data tool and recipe, and their command-line plumbing
(flag parser, logging setup, one-line errors).

Every problem with an input line becomes a `DataError` naming `file:line` and the field, or, with
`skip_bad=True`, a line in a rejected file plus a logged count. Nothing is dropped silently. Tools that turn
JSONL into JSONL (clean, dedup, convert, sample) do it through `JsonlTransform`.
"""

import argparse
import difflib
import functools
import glob
import json
import logging
import os
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("pretrain", "sft", "dpo", "rl", "prompt")
JSONL_SUFFIXES = (".jsonl",)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SPELLING_NOTE = "Every --flag_name can also be written --flag-name."


class DataError(ValueError):
    """A bad input record; the message starts with `file:line:`."""


def data_error_in(err: BaseException) -> DataError | None:
    """The `DataError` behind `err`, if any: `datasets` wraps what a generator raises in its own errors, so a loader
    re-raises this instead, and the `file:line` message reaches the user rather than a datasets traceback."""
    while err is not None:
        if isinstance(err, DataError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _type_name(value):
    return type(value).__name__ if value is not None else "null"


def _check_text(value, field, allow_empty=False):
    if not isinstance(value, str):
        raise ValueError(f"field '{field}': expected a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise ValueError(f"field '{field}': empty text")


def validate_messages(messages, field="conversations", final_assistant=False):
    """Check a chat: a non-empty list of {role, content} with known roles and at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"field '{field}': expected a non-empty list of messages, got {_type_name(messages)}")
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"field '{where}': expected an object with role and content, got {_type_name(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"field '{where}.role': unknown role {role!r} (expected one of {', '.join(ROLES)})")
        has_tool_calls = role == "assistant" and bool(message.get("tool_calls"))
        _check_text(message.get("content"), f"{where}.content", allow_empty=has_tool_calls)
        if "tool_calls" in message and message["tool_calls"] is not None:
            if role != "assistant" or not isinstance(message["tool_calls"], list):
                raise ValueError(f"field '{where}.tool_calls': expected a list on an assistant message")
        if message.get("reasoning_content") is not None:
            _check_text(message["reasoning_content"], f"{where}.reasoning_content", allow_empty=True)
    if final_assistant and messages[-1]["role"] != "assistant":
        raise ValueError(f"field '{field}': last message must be from the assistant, got {messages[-1]['role']!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"field '{field}': no assistant message")


def validate_pretrain(record, text_column="text"):
    if text_column not in record:
        raise ValueError(f"field '{text_column}': missing (keys: {', '.join(record) or 'none'})")
    _check_text(record[text_column], text_column)


def validate_sft(record):
    if "conversations" not in record:
        raise ValueError(f"field 'conversations': missing (keys: {', '.join(record) or 'none'})")
    validate_messages(record["conversations"], "conversations")


def validate_dpo(record):
    for field in ("chosen", "rejected"):
        if field not in record:
            raise ValueError(f"field '{field}': missing (keys: {', '.join(record) or 'none'})")
        validate_messages(record[field], field, final_assistant=True)


def _validate_prompt_field(record):
    if "prompt" not in record:
        raise ValueError(f"field 'prompt': missing (keys: {', '.join(record) or 'none'})")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        _check_text(prompt, "prompt")
        return
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"field 'prompt': expected a string or a non-empty list of messages, got {_type_name(prompt)}")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            raise ValueError(f"field 'prompt[{i}].role': unknown role {role!r} (expected one of {', '.join(ROLES)})")
        _check_text(message.get("content"), f"prompt[{i}].content")
    if prompt[-1]["role"] == "assistant":
        raise ValueError("field 'prompt': must end with a user or tool message, not the assistant")


def validate_rl(record):
    """RL with a verifiable answer: `prompt` (text or messages) and a non-empty string `answer`."""
    _validate_prompt_field(record)
    if "answer" not in record:
        raise ValueError(f"field 'answer': missing (keys: {', '.join(record)})")
    _check_text(record["answer"], "answer")


def validate_prompt(record):
    """Prompt-only RL data (scored by a reward model): `prompt` only."""
    _validate_prompt_field(record)


VALIDATORS = {
    "pretrain": validate_pretrain,
    "sft": validate_sft,
    "dpo": validate_dpo,
    "rl": validate_rl,
    "prompt": validate_prompt,
}


def detect_format(record):
    """Guess the project format of one record from its keys."""
    if "chosen" in record and "rejected" in record:
        return "dpo"
    if "conversations" in record:
        return "sft"
    if "prompt" in record:
        return "rl" if "answer" in record else "prompt"
    if "text" in record:
        return "pretrain"
    keys = ", ".join(record) or "none"
    raise ValueError(f"unknown record format (keys: {keys}); expected one of {', '.join(FORMATS)}")


def validate_auto(record):
    VALIDATORS[detect_format(record)](record)


def get_validator(fmt):
    """Validator for a format name; `auto` detects the format of each record."""
    if fmt in (None, "none"):
        return None
    if fmt == "auto":
        return validate_auto
    if fmt not in VALIDATORS:
        raise ValueError(f"--format: expected one of auto, {', '.join(FORMATS)}, got {fmt!r}")
    return VALIDATORS[fmt]


def _message_texts(messages):
    for message in messages:
        yield message.get("reasoning_content") or ""
        yield message.get("content") or ""


def record_text(record):
    """All natural-language text of a record in any project format, joined by newlines (for tokenizers, dedup)."""
    fmt = detect_format(record)
    if fmt == "pretrain":
        parts = [record["text"]]
    elif fmt == "sft":
        parts = list(_message_texts(record["conversations"]))
    elif fmt == "dpo":
        parts = list(_message_texts(record["chosen"])) + [record["rejected"][-1].get("content") or ""]
    else:
        prompt = record["prompt"]
        parts = [prompt] if isinstance(prompt, str) else list(_message_texts(prompt))
        if record.get("answer"):
            parts.append(record["answer"])
    return "\n".join(p for p in parts if p)


def rejected_path_for(output):
    """Where `--skip_bad` puts rejected lines for a tool writing `output`."""
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix == ".jsonl" else output.name
    return output.with_name(f"{stem}.rejected.jsonl")


def print_rejected(count, output):
    """The closing line of a --skip_bad run that set lines aside, the same in every tool."""
    if count:
        print(f"rejected {count} bad line{'s' if count > 1 else ''} -> {rejected_path_for(output)}")


class RejectedWriter:
    """Collects rejected lines (file, line, reason, raw text) into one JSONL file, opened on first use."""

    def __init__(self, path, append=False):
        self.path = Path(path)
        self.count = 0
        self._mode = "a" if append else "w"
        self._handle = None
        if not append and self.path.exists():
            self.path.unlink()

    def add(self, file, line, reason, raw):
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, self._mode, encoding="utf-8")
        record = {"file": str(file), "line": line, "reason": reason, "raw": raw}
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self):
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
        raise DataError(f"{path}:{number}: expected a JSON object, got {_type_name(record)}")
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


def setup_logging(level=logging.INFO):
    """One log format for every tool and recipe. Calling it again adds no second handler; it only sets the level."""
    logging.basicConfig(format=LOG_FORMAT)
    logging.getLogger().setLevel(level)


def cli(main):
    """Turn a user's mistake in a CLI `main` (DataError and other ValueErrors, missing or unwritable files) into one
    `error:` line on stderr and exit status 1, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(argv=None):
        setup_logging()
        try:
            return main(argv)
        except (ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    return wrapper


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every flag's help, and the module docstring (with its example command) kept as written."""


def _underscored(flag):
    return "--" + flag[2:].replace("-", "_")


def _dashed(flag):
    return "--" + flag[2:].replace("_", "-")


class FlagParser(argparse.ArgumentParser):
    """argparse that takes `--flag-name` for `--flag_name` (and the reverse) and names the nearest real flag for
    an unknown one. Help shows flags as declared (underscores, the project convention)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("epilog", SPELLING_NOTE)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        end = args.index("--") if "--" in args else len(args)
        return super().parse_known_args([*map(self._declared_spelling, args[:end]), *args[end:]], namespace)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        return namespace

    def _declared_spelling(self, arg):
        """`arg` with its flag respelled as declared when only the other spelling is a known flag."""
        flag, eq, value = arg.partition("=")
        if not flag.startswith("--") or flag in self._option_string_actions:
            return arg
        for spelling in (_underscored(flag), _dashed(flag)):
            if spelling in self._option_string_actions:
                return spelling + eq + value
        return arg

    def _unrecognized(self, extras):
        message = f"unrecognized argument{'s' if len(extras) > 1 else ''} {' '.join(extras)}"
        flags = {_underscored(o): o for o in self._option_string_actions if o.startswith("--")}
        guesses = []
        for arg in extras:
            if arg.startswith("--"):
                guesses += [flags[m] for m in difflib.get_close_matches(_underscored(arg.partition("=")[0]), flags, 1)]
        return f"{message}; did you mean {', '.join(guesses)}?" if guesses else message


def build_parser(description):
    return FlagParser(description=description)
