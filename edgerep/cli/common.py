"""Small helpers shared by the command modules: status lines and argument types checked at parse time.

The ``type=`` functions below make argparse refuse a bad value at once (exit 2, one line) instead of after
seconds of loading and converting: a fraction outside [0, 1], a NaN tolerance, ``--rounds 0``, ``--target ,``.
"""

from __future__ import annotations

import argparse
import math

from ..console import status, stream
from ..errors import BadInputError

__all__ = ["comma_list", "fraction", "key_value", "positive_float", "positive_int", "renamed", "split_list", "status"]


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
              file=stream())
        setattr(namespace, self.dest, values)


def renamed(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` as a hidden alias of the option ``new`` (already added to ``parser``)."""
    target = next(a for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, dest=target.dest, action=_Renamed, new=new, type=target.type, choices=target.choices)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def fraction(text: str) -> float:
    """A finite number in [0, 1] (agreement floors, fractions of inputs)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1] (e.g. 0.9)")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (tolerances)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number (e.g. 1e-5)")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: rounds, images, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return value


def comma_list(text: str) -> str:
    """A comma list with at least one name; kept as the string (commands split it with ``split_list``)."""
    if not split_list(text):
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give one or more names separated by commas")
    return text
