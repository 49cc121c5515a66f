"""Telling a local path from a Hub id before anything is downloaded, so a typo fails at once and names itself.

A value is a Hub id only when it has the `owner/name` shape and its first part is not a local folder; anything else
that does not exist on disk is a missing path (`runs/pretrain-tiy` is a typo, not a repository of user `runs`).
"""

import os
import re
from pathlib import Path

from .suggest import nearest

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".txt", ".yaml", ".yml", ".safetensors", ".bin", ".pth", ".arrow")


def is_hub_id(value: str) -> bool:
    """`owner/name` that cannot be a local path: no such file, the owner part is no local folder, no file suffix."""
    if Path(value).exists() or not HUB_ID.match(value) or value.endswith(LOCAL_SUFFIXES):
        return False
    return not Path(value.split("/")[0]).is_dir()


def _nearest(path: Path) -> str:
    """`; did you mean X?` for a sibling whose name is close to the missing one, else nothing."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return ""
    close = nearest(path.name, [p.name for p in parent.iterdir()], cutoff=0.75)
    if close is None:
        return ""
    return f"; did you mean {parent / close if str(path.parent) not in ('', '.') else close}?"


def check_name_or_path(value, what: str) -> str:
    """Return `value` (user home expanded) if it exists locally or is a Hub id; raise FileNotFoundError naming it
    otherwise, with the nearest existing name when there is one."""
    name = os.path.expanduser(str(value))
    if Path(name).exists() or is_hub_id(name):
        return name
    raise FileNotFoundError(f"{what} {value}: no such file or folder{_nearest(Path(name))}")


def from_pretrained_or_explain(cls, name: str, what: str, **kwargs):
    """`cls.from_pretrained(name)` whose failures read as one line: a folder lacking files, or a Hub id that could
    not be fetched (offline, no network, no such repository)."""
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if Path(name).exists():
            raise ValueError(f"{what} {name}: the folder cannot be loaded ({first_line})") from err
        if isinstance(err, ValueError):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        reason = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else first_line
        raise FileNotFoundError(f"{what} {name}: not a local path, and not loadable from the Hub: {reason}") from err
