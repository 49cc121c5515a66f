"""Which item keys are held out for eval/: a fixed share of compositional keys by hash, and whole rows of each
fact table, so no training text states a fact of a held-out row. No seed changes the split."""

import functools
import zlib

from data_process.synth.tables import ANIMALS, CAPITALS, COLORS, WORDS, ZH_WORDS

HELDOUT_PERCENT = 15


def _held_out(names):
    """The HELDOUT_PERCENT of names hashing lowest: a fixed share that no seed changes."""
    ranked = sorted(names, key=lambda name: zlib.crc32(name.encode("utf-8")))
    return frozenset(ranked[: max(1, round(len(names) * HELDOUT_PERCENT / 100))])


# Fact tables by key family. Their rows are held out whole, named by the English column; every other key is
# split by a hash of the whole key.
TABLES = {"animal": ANIMALS, "color": COLORS, "capital": CAPITALS}
HELDOUT_ROWS = {family: _held_out([row[1] for row in rows]) for family, rows in TABLES.items()}
HELDOUT_ROWS["letters"] = _held_out(WORDS) | _held_out(ZH_WORDS)
TRAIN_ONLY = ("month_days",)  # 12 keys, one fact each: too few to hold any out


def is_heldout(key):
    """Whether an item key belongs to the eval split."""
    family, name = key.split(":", 1)
    if family in HELDOUT_ROWS:
        return name in HELDOUT_ROWS[family]
    return family not in TRAIN_ONLY and zlib.crc32(key.encode("utf-8")) % 100 < HELDOUT_PERCENT


@functools.cache
def split_rows(family, eval_split):
    """The rows of a fact table in one split; cached, as every colour or capital item looks them up."""
    return [row for row in TABLES[family] if is_heldout(f"{family}:{row[1]}") == eval_split]
