"""Training data as a weighted mixture of sources, for pretraining, distillation and SFT (`--dataset_mixture`).

A mixture is a YAML list of entries with TRL's `DatasetConfig` names where they exist (`path`, `split`) and a
`weight`; TRL's own section shape, `{datasets: [...]}`, is read too:

    - path: data/general.jsonl   # anything the stage's loader reads: a file, folder, glob, saved dataset or Hub id
      weight: 3
    - path: owner/domain-chats   # relative paths are relative to the working directory, as for every path flag
      split: train               # the split of a Hub dataset or saved DatasetDict (default train)
      weight: 1

What a weight means: weights are shares, normalised over the entries (3 and 1 are 75% and 25%), of the stage's unit.
Pretraining counts tokens, because its loss falls on every token: the tokens a source feeds are its pull on the model,
and a document count would give a source of long documents more than its weight. SFT counts conversations, each one
supervised example, as TRL's `fraction` and alignment-handbook's `weight` count rows. The mixture holds as many units
as its sources together (the size of their plain concatenation), so epochs and steps keep their meaning, and each
source gets its share of that.

How the shares are realised: a source is taken in whole shuffled passes while its quota exceeds what it holds, then as
the prefix of a fresh shuffle that comes closest to what is left. Every row is then used as evenly as possible (the
same number of times, give or take one) and the shares come out exact to within one row, where drawing rows at random
would repeat some while skipping others and miss the shares by the binomial error. A source whose quota exceeds its
size is repeated, with a warning giving the passes, rather than refused: repeating a small domain set a few times is
the usual way to up-weight it (Muennighoff et al., 2023, found up to about four epochs of repeated data nearly as good
as fresh), and shrinking the mixture until nothing repeats (TRL's `fraction`) would throw most of the large sources
away. Everything is drawn from one generator seeded by the run's seed, then the rows of all sources are shuffled
together.
"""

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import yaml

from modeling_miniminds.cli import did_you_mean
from modeling_miniminds.cli.paths import check_name_or_path

logger = logging.getLogger(__name__)

ENTRY_KEYS = ("path", "weight", "split")
FLAG = "--dataset_mixture"


@dataclass(frozen=True)
class MixtureSource:
    """One entry of a mixture: its data (any form the stage's loader reads), its weight and its split."""

    path: str
    weight: float
    split: str = "train"


def read_mixture(value) -> tuple[MixtureSource, ...]:
    """The entries of a mixture given as a YAML file or, from a recipe file, as the list itself. A mistake raises
    one line naming the entry (counted from 1) and the key; entries read already are returned as they are."""
    if isinstance(value, tuple) and all(isinstance(entry, MixtureSource) for entry in value):
        return value
    where = FLAG
    if isinstance(value, (str, os.PathLike)):
        where = f"{FLAG} {value}"
        value = _read_yaml(value, where)
    if isinstance(value, dict):
        value = _datasets_section(value, where)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a list of entries ({', '.join(ENTRY_KEYS)}), got {value!r}")
    return tuple(_entry(item, f"{where}: entry {index}") for index, item in enumerate(value, 1))


def _read_yaml(path, where):
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ValueError(f"{where}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None


def _datasets_section(value: dict, where: str):
    """TRL's mixture section: the entries under `datasets`."""
    for key in value:
        if key != "datasets":
            raise ValueError(f"{where}: unknown key '{key}'; a mixture is a list of entries, or them under datasets")
    return value.get("datasets")


def _entry(item, where: str) -> MixtureSource:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a mapping with {', '.join(ENTRY_KEYS)}, got {item!r}")
    for key in item:
        if key not in ENTRY_KEYS:
            hint = did_you_mean(str(key), ENTRY_KEYS)
            raise ValueError(f"{where}: unknown key '{key}'{hint} (an entry has {', '.join(ENTRY_KEYS)})")
    missing = [key for key in ("path", "weight") if key not in item]
    if missing:
        raise ValueError(f"{where}: missing key '{missing[0]}'")
    path, weight, split = item["path"], item["weight"], item.get("split", "train")
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{where}: 'path' must be a file, folder, glob or Hub id, got {path!r}")
    where = f"{where} ({path})"
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"{where}: 'weight' must be a number, got {weight!r}")
    if weight <= 0:
        raise ValueError(f"{where}: 'weight' must be > 0, got {weight} (leave the entry out to drop a source)")
    if not isinstance(split, str) or not split:
        raise ValueError(f"{where}: 'split' must be a split name such as train, got {split!r}")
    if not any(ch in path for ch in "*?["):
        try:
            path = check_name_or_path(path, "dataset")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{where}: {err}") from None
    return MixtureSource(path, float(weight), split)


def draw(sizes: np.ndarray, quota: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices whose sizes add up to about `quota`: whole shuffled passes while the quota exceeds the source,
    then the prefix of a fresh shuffle whose sum comes closest to what is left."""
    passes, rest = divmod(quota, sizes.sum())
    orders = [rng.permutation(len(sizes)) for _ in range(int(passes) + 1)]
    cumulative = np.cumsum(sizes[orders[-1]])
    count = int(np.searchsorted(cumulative, rest))
    below = cumulative[count - 1] if count else 0
    if count < len(sizes) and cumulative[count] - rest < rest - below:
        count += 1
    return np.concatenate([*orders[:-1], orders[-1][:count]])


def _same_columns(parts: list, sources) -> list:
    """The sources with the first one's features; sources prepared differently (e.g. packed another way) stop."""
    first = parts[0]
    for index, (part, source) in enumerate(zip(parts, sources), 1):
        if sorted(part.column_names) != sorted(first.column_names):
            raise ValueError(
                f"{FLAG}: entry {index} ({source.path}) has columns {', '.join(part.column_names)} where entry 1 has "
                f"{', '.join(first.column_names)}; prepare every source the same way"
            )
    return [part if part.features == first.features else part.cast(first.features) for part in parts]


def sample(sources: tuple[MixtureSource, ...], sizes: list[np.ndarray], unit: str, rng) -> list[np.ndarray]:
    """Per source, the row indices that give it its weight's share of all the `unit`s (`sizes` per row); a source
    asked for more than it holds is repeated, with a warning."""
    total, weights = sum(int(size.sum()) for size in sizes), sum(source.weight for source in sources)
    picks = []
    for index, (source, size) in enumerate(zip(sources, sizes), 1):
        quota = total * source.weight / weights
        if quota > size.sum():
            logger.warning(
                f"{FLAG}: entry {index} ({source.path}) is repeated: its weight asks for {quota / size.sum():.2f} "
                f"passes over its {int(size.sum())} {unit}"
            )
        picks.append(draw(size, quota, rng))
    return picks


def mix(
    parts: list[datasets.Dataset],
    sources: tuple[MixtureSource, ...],
    counts: list[dict[str, np.ndarray]],
    unit: str,
    seed: int,
    limit: int | None = None,
) -> tuple[datasets.Dataset, dict]:
    """The mixture of the loaded `parts` (one per source), and what it holds of each source.

    `counts[i]` gives, per row of part i, its `documents` and `tokens`; the weights are realised in `unit` (one of
    them). The rows are shuffled together and, with `limit`, the first `limit` are kept (and counted)."""
    parts = _same_columns(parts, sources)
    rng = np.random.default_rng(seed)
    picks = sample(sources, [count[unit] for count in counts], unit, rng)
    part_of = np.concatenate([np.full(len(pick), index) for index, pick in enumerate(picks)])
    rows = np.concatenate(picks)
    order = rng.permutation(len(rows))[:limit]
    part_of, rows = part_of[order], rows[order]
    offsets = np.cumsum([0, *(len(part) for part in parts)])
    mixed = datasets.concatenate_datasets(parts).select(offsets[part_of] + rows)
    kept = [rows[part_of == index] for index in range(len(parts))]
    return mixed, describe(sources, counts, kept, unit)


def describe(sources, counts: list[dict[str, np.ndarray]], picks: list[np.ndarray], unit: str) -> dict:
    """What the mixture holds of each source (documents, tokens, the share of `unit` against the weight's share,
    passes over the source), logged and returned for the stage's result."""
    weights = sum(source.weight for source in sources)
    entries = [
        {
            "path": source.path,
            "split": source.split,
            "weight": source.weight,
            "documents": int(count["documents"][pick].sum()),
            "tokens": int(count["tokens"][pick].sum()),
            "passes": round(len(pick) / len(count[unit]), 3),
        }
        for source, count, pick in zip(sources, counts, picks)
    ]
    total = sum(entry[unit] for entry in entries)
    for entry in entries:
        entry["target_share"] = round(entry["weight"] / weights, 4)
        entry["share"] = round(entry[unit] / total, 4)
        logger.info(
            f"mixture: {entry['path']}: {entry['documents']} documents, {entry['tokens']} tokens, "
            f"{entry['share']:.1%} of the {unit} (weight {entry['target_share']:.1%}), {entry['passes']} passes"
        )
    return {
        "unit": unit,
        "documents": sum(entry["documents"] for entry in entries),
        "tokens": sum(entry["tokens"] for entry in entries),
        "sources": entries,
    }
