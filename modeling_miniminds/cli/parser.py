"""The argparse parser every MiniMinds command builds on: both flag spellings, the nearest real flag named for an
unknown one, and help that keeps the module docstring as written and shows each default."""

import argparse
import sys

from .suggest import nearest

SPELLING_NOTE = "Every --flag_name can also be written --flag-name."


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every flag's help, and the module docstring (with its example command) kept as written."""


def _underscored(flag):
    return "--" + flag[2:].replace("-", "_")


def _dashed(flag):
    return "--" + flag[2:].replace("_", "-")


class FlagParser(argparse.ArgumentParser):
    """argparse that takes `--flag-name` for `--flag_name` (and the reverse) and names the nearest real flag for
    an unknown one. Help shows flags as declared (underscores, the project convention)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("epilog", SPELLING_NOTE)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        end = args.index("--") if "--" in args else len(args)
        return super().parse_known_args([*map(self._declared_spelling, args[:end]), *args[end:]], namespace)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        return namespace

    def _declared_spelling(self, arg):
        """`arg` with its flag respelled as declared when only the other spelling is a known flag."""
        flag, eq, value = arg.partition("=")
        if not flag.startswith("--") or flag in self._option_string_actions:
            return arg
        for spelling in (_underscored(flag), _dashed(flag)):
            if spelling in self._option_string_actions:
                return spelling + eq + value
        return arg

    def _unrecognized(self, extras):
        message = f"unrecognized argument{'s' if len(extras) > 1 else ''} {' '.join(extras)}"
        flags = {_underscored(o): o for o in self._option_string_actions if o.startswith("--")}
        guesses = [nearest(_underscored(arg.partition("=")[0]), flags) for arg in extras if arg.startswith("--")]
        guesses = [flags[guess] for guess in guesses if guess is not None]
        return f"{message}; did you mean {', '.join(guesses)}?" if guesses else message
