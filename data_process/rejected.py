"""Where bad input lines go under `--skip_bad`: one rejected file per output, each line with its file, line number,
reason and raw text, and the closing count line every tool prints."""

import json
from pathlib import Path


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
            self._handle = open(self.path, self._mode, encoding="utf-8")  # noqa: SIM115 (kept open across add calls)
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
