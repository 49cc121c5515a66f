"""The one nearest-name suggester behind every "did you mean" the project prints (flags, YAML keys, paths)."""

import difflib
from collections.abc import Iterable


def nearest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice closest to `name` by difflib's ratio, or None when none reaches `cutoff`."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.6, prefix: str = "") -> str:
    """`; did you mean <prefix><choice>?` for the nearest choice, or "" so a message can always append it."""
    choice = nearest(name, choices, cutoff)
    return f"; did you mean {prefix}{choice}?" if choice is not None else ""
