"""95% intervals for held-out numbers, so a report claims a change only when the data can tell.

A probe that wants an interval returns its per-question values beside its mean, under `items`:
`{"accuracy": 0.4, "items": {"accuracy": [1, 0, ...]}}`. An accuracy (hits: ints 0 or 1) gets Wilson's score
interval, any other mean (floats: a reward, a loss, a KL) a t interval. A before/after gain is the mean of the
per-question differences (after minus before, the same questions on both sides) with a t interval: pairing removes
the spread between questions, so it is far narrower than two independent intervals.
"""

import math

from scipy import stats

LEVEL = 0.95
ITEMS = "items"


def is_binary(values) -> bool:
    """Whether `values` are hits (ints or bools, 0 or 1): an accuracy. Floats are measurements (a reward, a KL), even
    when every one is 0.0, so a KL that is 0 by definition gets [0, 0], not an accuracy's interval."""
    return all(isinstance(value, (bool, int)) and value in (0, 1) for value in values)


def interval(values) -> dict:
    """`{"value", "n", "ci_low", "ci_high"}` for the mean of `values` (Wilson for 0/1 values, else t)."""
    n = len(values)
    if n == 0:
        raise ValueError("an interval needs at least one value")
    binary, values = is_binary(values), [float(value) for value in values]
    mean = sum(values) / n
    if binary:
        low, high = stats.binomtest(round(sum(values)), n).proportion_ci(confidence_level=LEVEL, method="wilson")
    else:
        low, high = mean_interval(values)
    return {"value": round(mean, 4), "n": n, "ci_low": round(float(low), 4), "ci_high": round(float(high), 4)}


def share_items(share: float, n: int) -> list[int]:
    """Hits standing in for an accuracy known only as its share of `n` questions (a mean that keeps no per-question
    list, such as TRL's DPO eval or the multiple-choice scorer): its interval is the same in any order."""
    hits = round(share * n)
    return [1] * hits + [0] * (n - hits)


def share_interval(share: float, n: int) -> dict:
    """The interval of an accuracy known only as its share of `n` questions."""
    return interval(share_items(share, n))


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The t interval of a mean; a single value or no spread gives the mean itself."""
    n, mean = len(values), sum(values) / len(values)
    if n < 2:
        return mean, mean
    sd = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))
    half = stats.t.ppf(0.5 + LEVEL / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_gain(before, after) -> dict:
    """`{"diff", "n", "ci_low", "ci_high"}`: the mean of after minus before over the same questions."""
    if len(before) != len(after):
        raise ValueError(f"a paired gain needs the same questions on both sides ({len(before)} vs {len(after)})")
    diffs = [float(b) - float(a) for a, b in zip(before, after)]
    low, high = mean_interval(diffs)
    if is_binary(before) and is_binary(after):  # a difference of two accuracies lies in [-1, 1]
        low, high = max(low, -1.0), min(high, 1.0)
    return {
        "diff": round(sum(diffs) / len(diffs), 4),
        "n": len(diffs),
        "ci_low": round(float(low), 4),
        "ci_high": round(float(high), 4),
    }


def merge_metrics(*parts: dict) -> dict:
    """Several probes' metrics as one side, their per-question `items` merged, not overwritten."""
    merged, items = {}, {}
    for part in parts:
        merged.update({key: value for key, value in part.items() if key != ITEMS})
        items.update(part.get(ITEMS) or {})
    return merged | ({ITEMS: items} if items else {})


def with_intervals(side: dict) -> dict:
    """A probe side with each metric that has per-question `items` replaced by its interval; `items` dropped."""
    items = side.get(ITEMS) or {}
    out = {key: value for key, value in side.items() if key != ITEMS}
    for name, values in items.items():
        if values:
            out[name] = interval(values)
    return out


def paired_gains(before: dict, after: dict) -> dict:
    """The gain of every metric with per-question items on both sides over the same number of questions."""
    before_items, after_items = before.get(ITEMS) or {}, after.get(ITEMS) or {}
    return {
        name: paired_gain(before_items[name], values)
        for name, values in after_items.items()
        if values and len(before_items.get(name) or ()) == len(values)
    }


def verdict(gain: dict) -> str:
    """What a gain shows: "up" or "down" when its interval excludes 0, else "no significant change"."""
    if gain["ci_low"] > 0:
        return "up"
    if gain["ci_high"] < 0:
        return "down"
    return "no significant change"
