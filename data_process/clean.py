"""Normalise and filter text records, reporting what each rule changed or removed.

    python -m data_process.clean --input raw.jsonl --output clean.jsonl --min_chars 20

Normalisation (each rule can be switched off): Unicode NFKC; control and invisible characters removed;
exotic spaces, trailing spaces and runs of blank lines normalised; punctuation made full-width when the
nearest letter is Chinese and half-width when it is Latin (NFKC alone would turn "你好，世界" into
"你好,世界"). Counts are per rule: a Chinese comma that NFKC narrows and the punctuation rule widens
again is counted by both, though the text ends up as it was.
Filters (on all text of a record): length in characters, and the share of letters/CJK among non-space
characters. Every text field of every project format is cleaned (messages, prompts, answers).
"""

import re
import unicodedata
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass

from data_process.jsonl import dumps
from data_process.records import record_text
from data_process.rejected import print_rejected
from data_process.text import IS_CJK
from data_process.transform import JsonlTransform, add_io_arguments
from modeling_miniminds.cli import FlagParser, command_main

INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200e\u200f\u2060\ufeff\u00ad"))
HALF_TO_FULL = {",": "，", "!": "！", "?": "？", ":": "：", ";": "；", "(": "（", ")": "）"}
FULL_TO_HALF = {v: k for k, v in HALF_TO_FULL.items()}
PUNCT = re.compile("[" + re.escape("".join(HALF_TO_FULL) + "".join(FULL_TO_HALF)) + "]")
CONTEXT_CHARS = 20
BLANK_RUNS = re.compile(r"\n{3,}")
TRAILING_SPACE = re.compile(r"[ \t]+\n")
EXOTIC_SPACE = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")


@dataclass
class CleanConfig:
    """Which rules run; the filters apply to the whole text of a record after normalisation."""

    nfkc: bool = True
    strip_control: bool = True
    whitespace: bool = True
    punctuation: bool = True
    min_chars: int = 1
    max_chars: int = 1_000_000
    min_text_ratio: float = 0.0


def _nfkc(text):
    return unicodedata.normalize("NFKC", text)


def _strip_control(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(INVISIBLE)
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def _whitespace(text):
    text = EXOTIC_SPACE.sub(" ", text)
    text = TRAILING_SPACE.sub("\n", text)
    return BLANK_RUNS.sub("\n\n", text).strip()


def _nearest_letter(text, index):
    """The closest letter before `index` (else after it), skipping digits, spaces and punctuation."""
    for ch in reversed(text[max(0, index - CONTEXT_CHARS) : index]):
        if ch.isalpha():
            return ch
    for ch in text[index + 1 : index + 1 + CONTEXT_CHARS]:
        if ch.isalpha():
            return ch
    return None


def _punctuation(text):
    """Full-width punctuation among Chinese, half-width among Latin text; a comma between digits is kept."""

    def fix(match):
        mark, i = match.group(), match.start()
        if mark in ",，" and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit():
            return mark
        letter = _nearest_letter(text, i)
        if letter is None:
            return mark
        return HALF_TO_FULL.get(mark, mark) if IS_CJK.match(letter) else FULL_TO_HALF.get(mark, mark)

    return PUNCT.sub(fix, text)


RULES = {"nfkc": _nfkc, "strip_control": _strip_control, "whitespace": _whitespace, "punctuation": _punctuation}


def normalize_text(text, config, changed=None):
    """Apply the enabled normalisation rules in order; count in `changed` each rule that altered the text."""
    for name, rule in RULES.items():
        if getattr(config, name):
            new = rule(text)
            if changed is not None and new != text:
                changed[name] += 1
            text = new
    return text


def text_ratio(text):
    """Share of letters (any script, CJK included) among non-whitespace characters."""
    visible = [ch for ch in text if not ch.isspace()]
    return sum(ch.isalpha() for ch in visible) / len(visible) if visible else 0.0


def filter_reason(text, config):
    """The name of the first filter `text` fails, or None when it passes."""
    if len(text) < config.min_chars:
        return "min_chars"
    if len(text) > config.max_chars:
        return "max_chars"
    if text_ratio(text) < config.min_text_ratio:
        return "min_text_ratio"
    return None


def _map_texts(value, fn, key=None):
    """Apply fn to every string that is natural text in a record (not roles, tool names or ids)."""
    if isinstance(value, str):
        return fn(value) if key in (None, "text", "content", "reasoning_content", "prompt", "answer") else value
    if isinstance(value, list):
        return [_map_texts(v, fn, key) for v in value]
    if isinstance(value, dict):
        return {k: _map_texts(v, fn, k) for k, v in value.items()}
    return value


def clean_record(record, config, changed=None):
    """Return (cleaned record, None) or (None, name of the filter that removed it)."""
    cleaned = _map_texts(record, lambda t: normalize_text(t, config, changed))
    reason = filter_reason(record_text(cleaned), config)
    return (None, reason) if reason else (cleaned, None)


def clean_jsonl(inputs, output, config=None, fmt="auto", skip_bad=False, removed_path=None):
    """Clean JSONL files into `output`; return a report of counts per rule (changed) and filter (removed)."""
    config = config or CleanConfig()
    changed, removed = Counter(), Counter()
    kept = 0
    job = JsonlTransform(inputs, output, fmt, skip_bad, desc="clean")
    with job, open(removed_path, "w", encoding="utf-8") if removed_path else nullcontext() as removed_handle:
        for item in job.records():
            cleaned, reason = clean_record(item.record, config, changed)
            if reason:
                removed[reason] += 1
                if removed_handle:
                    removed_handle.write(dumps({"reason": reason, "record": item.record}) + "\n")
                continue
            job.write(cleaned)
            kept += 1
    return {"kept": kept, "removed": dict(removed), "changed": dict(changed), "rejected": job.rejected}


def make_parser():
    parser = add_io_arguments(FlagParser(description=__doc__))
    defaults = CleanConfig()
    for name in ("nfkc", "strip_control", "whitespace", "punctuation"):
        parser.add_argument(f"--no_{name}", action="store_true", help=f"skip the {name} normalisation rule")
    parser.add_argument("--min_chars", type=int, default=defaults.min_chars, help="drop records shorter than this")
    parser.add_argument("--max_chars", type=int, default=defaults.max_chars, help="drop records longer than this")
    parser.add_argument(
        "--min_text_ratio",
        type=float,
        default=defaults.min_text_ratio,
        help="drop records whose share of letters/CJK among non-space characters is below this (0-1)",
    )
    parser.add_argument("--removed", default=None, help="also write filtered-out records with their reason here")
    return parser


def print_report(report, output):
    print(f"kept {report['kept']} records in {output}")
    for kind in ("changed", "removed"):
        for rule, count in sorted(report[kind].items()):
            print(f"  {kind:<8}{rule:<16}{count}")
    print_rejected(report["rejected"], output)


@command_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    config = CleanConfig(
        nfkc=not args.no_nfkc,
        strip_control=not args.no_strip_control,
        whitespace=not args.no_whitespace,
        punctuation=not args.no_punctuation,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        min_text_ratio=args.min_text_ratio,
    )
    report = clean_jsonl(args.input, args.output, config, args.format, args.skip_bad, args.removed)
    print_report(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
