"""Small helpers shared by the command modules."""

from __future__ import annotations

import argparse
import sys

from ..errors import BadInputError


def status(msg: str) -> None:
    """Progress line on stderr, so stdout stays clean for ``--json``."""
    print(msg + " ...", file=sys.stderr, flush=True)


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BadInputError(f"--option {text!r} is not KEY=VALUE (e.g. --option opset=18)")
    return key.strip(), value.strip()


class _Renamed(argparse.Action):
    """An old spelling of an option, kept for one release: it works, warns once, and is hidden from --help."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is renamed {self.new}; the old spelling goes in the next release",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def renamed(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` as a hidden alias of the option ``new`` (already added to ``parser``)."""
    dest = next(a.dest for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, dest=dest, action=_Renamed, new=new)
