"""The command line every MiniMinds tool shares: one parser family, one `error:` line wrapper, one nearest-name
suggester, and telling local paths from Hub ids."""

from .command import USER_ERRORS, command_main, debugging, setup_logging
from .parser import SPELLING_NOTE, FlagParser, HelpFormatter
from .suggest import did_you_mean, nearest

__all__ = [
    "SPELLING_NOTE",
    "USER_ERRORS",
    "FlagParser",
    "HelpFormatter",
    "command_main",
    "debugging",
    "did_you_mean",
    "nearest",
    "setup_logging",
]
