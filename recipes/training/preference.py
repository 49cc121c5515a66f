"""What the reward and DPO stages share: preference pairs read into one form and checked before any model loads.

Pair layouts (one per JSONL line, or per row of a Hub dataset):

    implicit  {"chosen": messages, "rejected": messages}   whole conversations sharing their prompt: the project's
              `dpo` format and upstream MiniMind's dpo.jsonl
    explicit  {"prompt": messages, "chosen": messages, "rejected": messages}   the replies alone
    text      {"prompt": str, "chosen": str, "rejected": str}   through data_process.convert (`preference` source)

Each becomes `{"prompt": messages, "chosen": [reply], "rejected": [reply]}`, the explicit form both TRL trainers read,
keeping a `rejected_kind` label where the pair has one (the built-in corpus says what is wrong with each rejected
reply; the reward stage reports its held-out accuracy per kind).
A pair with a missing side, an empty reply or two identical replies teaches nothing (upstream users saw DPO stuck at
0.693 on such data): it is a `file:line` error, or with `--skip_bad` a counted line in `rejected_pairs.jsonl`.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from data_process.convert import convert_record
from data_process.jsonl import iter_records
from data_process.records import DataError, validate_messages, validate_prompt
from data_process.rejected import RejectedWriter
from data_process.sources import resolve_source
from recipes.training.args import ScriptArguments

logger = logging.getLogger(__name__)

REJECTED_FILE = "rejected_pairs.jsonl"
PAIR_LABEL = "rejected_kind"


@dataclass
class PreferenceScriptArguments(ScriptArguments):
    """Data options of the preference stages (reward model, DPO)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Preference pairs: a JSONL file, folder or glob, or a Hub dataset id. Implicit "
            "{chosen, rejected} conversations, explicit {prompt, chosen, rejected} messages, or plain-text "
            "{prompt, chosen, rejected}."
        },
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out pairs (same layouts) for the held-out preference metrics."}
    )
    skip_bad: bool = field(
        default=False,
        metadata={
            "help": "Set bad pairs (missing or identical side, malformed line) aside in "
            f"<output_dir>/{REJECTED_FILE}, counted, instead of stopping at the first one."
        },
    )
    max_eval_pairs: int | None = field(
        default=None, metadata={"help": "Use at most this many held-out pairs (quick runs); default all."}
    )


def _trimmed(messages: list[dict]) -> list[dict]:
    """Messages with their text stripped: replies that differ only in surrounding whitespace are the same reply."""
    return [{**m, "content": (m.get("content") or "").strip()} for m in messages]


def split_pair(chosen: list[dict], rejected: list[dict]) -> dict:
    """Split two whole conversations at their longest common run of leading messages: the prompt, then the replies.
    Raises ValueError naming the field when the pair shares no prompt, lacks a reply or has two identical ones."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    prompt, chosen_reply, rejected_reply = chosen[:shared], chosen[shared:], rejected[shared:]
    if _trimmed(chosen_reply) == _trimmed(rejected_reply):
        raise ValueError("chosen and rejected are identical: the pair prefers nothing")
    if not prompt:
        raise ValueError("fields 'chosen' and 'rejected' share no prompt: their first messages differ")
    for name, reply in (("chosen", chosen_reply), ("rejected", rejected_reply)):
        if not reply:
            raise ValueError(f"field '{name}': no reply after the {shared} messages both sides share")
        if reply[0].get("role") != "assistant":
            raise ValueError(
                f"field '{name}[{shared}]': the sides differ at a {reply[0].get('role')!r} message, before the "
                "reply; a pair shares everything up to its assistant replies"
            )
    return {"prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply}


def canonical_pair(record: dict) -> dict:
    """One pair in any accepted layout as `{"prompt", "chosen", "rejected"}` messages, checked."""
    missing = [name for name in ("chosen", "rejected") if record.get(name) is None]
    if missing:
        raise ValueError(f"field '{missing[0]}': missing (keys: {', '.join(record) or 'none'})")
    label = {PAIR_LABEL: record[PAIR_LABEL]} if isinstance(record.get(PAIR_LABEL), str) else {}
    prompt = record.get("prompt")
    if not isinstance(prompt, list) and not (prompt is None and isinstance(record["chosen"], list)):
        _, record = convert_record(record, source="preference", target="dpo")  # plain text: whole conversations
        prompt = None
    if prompt is not None:
        validate_prompt(record)
    for name in ("chosen", "rejected"):
        validate_messages(record[name], name, final_assistant=True)
    prompt = prompt or []
    return split_pair(prompt + record["chosen"], prompt + record["rejected"]) | label


def _checked(where: str, record: dict, raw: str, rejected):
    """The canonical pair, None when it went to `rejected`, or a DataError naming `where`."""
    try:
        return canonical_pair(record)
    except ValueError as err:
        if rejected is None:
            raise DataError(f"{where}: {err}") from None
        file, _, line = where.rpartition(":")
        rejected.add(file, int(line) if line.isdigit() else line, str(err), raw)
        return None


def read_pairs(name: str, split: str = "train", rejected=None) -> list[dict]:
    """The checked pairs of `split` of local JSONL or parquet files (a file, folder or glob), a saved dataset or a
    Hub dataset (see data_process.sources); bad lines raise DataError, or go to `rejected` (a RejectedWriter) when
    given."""
    source = resolve_source(name, split)
    name, pairs = source.name, []
    for path in source.files:
        for line, _, raw, record in iter_records(path, rejected=rejected):
            pair = _checked(f"{path}:{line}", record, raw.decode("utf-8", errors="replace"), rejected)
            pairs += [pair] if pair else []
    for row, record in enumerate(source.table or ()):
        pair = _checked(f"{name}[{split}]:{row}", record, json.dumps(record, ensure_ascii=False), rejected)
        pairs += [pair] if pair else []
    if not pairs:
        raise ValueError(f"dataset {name}: no usable preference pairs")
    return pairs


class _CountOnly:
    """Stands in for the rejected file on every process but the first: they skip the same lines, one writes them."""

    def __init__(self):
        self.count = 0

    def add(self, *args):
        self.count += 1

    def close(self):
        pass


def load_preference_datasets(script_args: PreferenceScriptArguments, training_args):
    """Training and held-out pairs as `datasets.Dataset`s (held-out None without --eval_dataset_name), checked
    line by line; with --skip_bad the bad lines of both go to one counted file in the output folder."""
    if not script_args.dataset_name:
        raise ValueError("pass --dataset_name: the preference pairs (a JSONL file, folder, glob or Hub id)")
    writer = None
    if script_args.skip_bad:
        first = training_args.process_index == 0
        writer = RejectedWriter(Path(training_args.output_dir) / REJECTED_FILE) if first else _CountOnly()
    try:
        train = read_pairs(script_args.dataset_name, script_args.dataset_train_split, writer)
        held_out = None
        if script_args.eval_dataset_name:
            held_out = read_pairs(script_args.eval_dataset_name, script_args.dataset_test_split, writer)
            held_out = held_out[: script_args.max_eval_pairs]
    finally:
        if writer is not None:
            writer.close()
    if isinstance(writer, RejectedWriter) and writer.count:
        logger.warning(f"skipped {writer.count} bad preference pairs, written with their reasons to {writer.path}")
    as_dataset = datasets.Dataset.from_list
    return as_dataset(train), (as_dataset(held_out) if held_out else None), (writer.count if writer else 0)


def warn_if_dropped(name: str, read: int, dataset, max_length: int | None) -> None:
    """TRL leaves out pairs too long for `max_length` (reward) or whose prompt alone fills it (DPO): say how many."""
    if dataset is not None and len(dataset) < read:
        logger.warning(f"{read - len(dataset)} of {read} {name} pairs left out: too long for max_length={max_length}")
