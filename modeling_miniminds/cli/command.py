"""Running a command's `main`: one log format, and a user's mistake reported as one `error:` line, not a traceback.

A user's mistake is a ValueError (bad value, bad data line) or an OSError (missing or unwritable file); anything else
is a bug and keeps its traceback. `MINIMINDS_DEBUG=1` shows the traceback of a mistake too.
"""

import functools
import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
USER_ERRORS = (ValueError, OSError)


def setup_logging(level=logging.INFO):
    """One log format for every tool and recipe. Calling it again adds no second handler; it only sets the level."""
    logging.basicConfig(format=LOG_FORMAT)
    logging.getLogger().setLevel(level)


def debugging() -> bool:
    """Whether MINIMINDS_DEBUG asks for tracebacks instead of `error:` lines."""
    return os.environ.get("MINIMINDS_DEBUG", "0") not in ("", "0")


def command_main(main=None, *, errors=USER_ERRORS, exit=False):
    """Wrap a command's `main`: set up logging, turn `errors` into one `error: ...` line on stderr and status 1,
    returned (`main(argv) == 1`) or, with `exit=True`, raised as SystemExit(1).

    Use bare (`@command_main`) or with options (`@command_main(errors=(ValueError, OSError, RuntimeError))`).
    """
    if main is None:
        return functools.partial(command_main, errors=errors, exit=exit)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        setup_logging()
        try:
            return main(*args, **kwargs)
        except errors as err:
            if debugging():
                raise
            print(f"error: {err}", file=sys.stderr)
            if exit:
                raise SystemExit(1) from None
            return 1

    return wrapper
