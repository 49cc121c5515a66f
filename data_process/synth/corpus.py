"""Writing a corpus folder: the training files, eval/ and dev/ with their held-out records and probes, and a
manifest."""

import json
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from data_process.jsonl import write_jsonl
from data_process.synth.builders import MAKERS, iter_keyed_records, iter_records
from data_process.synth.heldout import DEV_PERCENT, DEV_ROWS, HELDOUT_PERCENT, HELDOUT_ROWS
from data_process.synth.probes import completion_probes, trained_fact_probes

SIZES = {
    "tiny": {"pretrain": 400, "sft": 300, "dpo": 120, "rl": 120, "rl_tools": 60, "agent": 60, "eval": 40},
    "small": {"pretrain": 17000, "sft": 8000, "dpo": 2000, "rl": 2000, "rl_tools": 1000, "agent": 1000, "eval": 400},
    "medium": {
        "pretrain": 300000,
        "sft": 60000,
        "dpo": 12000,
        "rl": 12000,
        "rl_tools": 6000,
        "agent": 6000,
        "eval": 2000,
    },
}


def _take(kind, count, seed, split):
    return islice(iter_records(kind, seed, split), count)


def _counts(size):
    if size not in SIZES:
        raise ValueError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    return SIZES[size]


def split_keys(size="tiny", seed=0):
    """The item keys build_corpus(out, size, seed) writes into the training files, dev/ and eval/, replayed."""
    counts = _counts(size)
    keys = {"train": set(), "dev": set(), "eval": set()}
    for kind in MAKERS:
        for split, count in (("train", counts[kind]), ("dev", counts["eval"]), ("eval", counts["eval"])):
            for _, record_keys in islice(iter_keyed_records(kind, seed, split), count):
                keys[split].update(record_keys)
    return keys


def build_corpus(out_dir, size="tiny", seed=0):
    """Write pretrain/sft/dpo/rl/rl_tools/agent JSONL files, and eval/ and dev/ folders holding the same kinds of
    held-out records plus completion probes; return their paths (`rl_tools` and `eval_rl_tools` are the calculator
    questions for GRPO with tools, `agent` and `eval_agent` the agent RL records in upstream's layout, training and
    held-out). Settings are chosen on dev/ and reported on eval/."""
    counts = _counts(size)
    out_dir = Path(out_dir)
    paths = {"eval": out_dir / "eval", "dev": out_dir / "dev"}
    written = {}
    for kind in tqdm(MAKERS, desc=f"synth {size}", disable=size == "tiny"):
        paths[kind] = out_dir / f"{kind}.jsonl"
        written[kind] = write_jsonl(paths[kind], _take(kind, counts[kind], seed, "train"))
        for split in ("eval", "dev"):
            written[f"{split}/{kind}"] = write_jsonl(
                paths[split] / f"{kind}.jsonl", _take(kind, counts["eval"], seed, split)
            )
    for split in ("eval", "dev"):
        probes = completion_probes(counts["eval"], seed, split)
        written[f"{split}/completion"] = write_jsonl(paths[split] / "completion.jsonl", probes)
    paths["eval_rl_tools"] = paths["eval"] / "rl_tools.jsonl"
    paths["eval_agent"] = paths["eval"] / "agent.jsonl"
    paths["completion"] = paths["eval"] / "completion.jsonl"
    paths["trained_facts"] = paths["eval"] / "trained_facts.jsonl"
    written["eval/trained_facts"] = write_jsonl(paths["trained_facts"], trained_fact_probes())
    manifest = {
        "size": size,
        "seed": seed,
        "records": written,
        "heldout_percent": HELDOUT_PERCENT,
        "dev_percent": DEV_PERCENT,
        "heldout": {family: sorted(names) for family, names in HELDOUT_ROWS.items()},
        "dev": {family: sorted(names) for family, names in DEV_ROWS.items()},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return paths
