"""Which split each item key belongs to: train, dev (where settings are chosen) or eval (what reports show). A fixed
share of compositional keys by hash, and whole rows of each fact table, so no training text states a fact of a dev
or eval row. No seed changes the split."""

import functools
import zlib

from data_process.synth.tables import ANIMALS, CAPITALS, COLORS, WORDS, ZH_WORDS

HELDOUT_PERCENT = 15  # eval
DEV_PERCENT = 10
SPLITS = ("train", "dev", "eval")


def _held_out(names):
    """The lowest-hashing HELDOUT_PERCENT of names for eval, the next DEV_PERCENT for dev; no seed changes them."""
    ranked = sorted(names, key=lambda name: zlib.crc32(name.encode("utf-8")))
    held, dev = (max(1, round(len(names) * percent / 100)) for percent in (HELDOUT_PERCENT, DEV_PERCENT))
    return frozenset(ranked[:held]), frozenset(ranked[held : held + dev])


# Fact tables by key family. Their rows are held out whole, named by the English column; every other key is
# split by a hash of the whole key.
TABLES = {"animal": ANIMALS, "color": COLORS, "capital": CAPITALS}
_ROW_SPLITS = {family: _held_out([row[1] for row in rows]) for family, rows in TABLES.items()}
_ROW_SPLITS["letters"] = tuple(a | b for a, b in zip(_held_out(WORDS), _held_out(ZH_WORDS), strict=True))
HELDOUT_ROWS = {family: rows for family, (rows, _) in _ROW_SPLITS.items()}
DEV_ROWS = {family: rows for family, (_, rows) in _ROW_SPLITS.items()}
TRAIN_ONLY = ("month_days",)  # 12 keys, one fact each: too few to hold any out


def split_of(key):
    """ "train", "dev" or "eval" for an item key."""
    family, name = key.split(":", 1)
    if family in HELDOUT_ROWS:
        return "eval" if name in HELDOUT_ROWS[family] else "dev" if name in DEV_ROWS[family] else "train"
    if family in TRAIN_ONLY:
        return "train"
    band = zlib.crc32(key.encode("utf-8")) % 100
    return "eval" if band < HELDOUT_PERCENT else "dev" if band < HELDOUT_PERCENT + DEV_PERCENT else "train"


def is_heldout(key):
    """Whether an item key is kept out of every training file (it belongs to dev or eval)."""
    return split_of(key) != "train"


def check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return split


@functools.cache
def split_rows(family, split):
    """The rows of a fact table in one split; cached, as every colour or capital item looks them up."""
    return [row for row in TABLES[family] if split_of(f"{family}:{row[1]}") == split]
