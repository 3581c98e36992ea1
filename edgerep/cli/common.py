"""Small helpers shared by the command modules: status lines and argument types checked at parse time.

The ``type=`` functions below make argparse refuse a bad value at once (exit 2, one line) instead of after
seconds of loading and converting: a fraction outside [0, 1], a NaN tolerance, ``--rounds 0``, ``--target ,``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

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


def add_geometry(parser: argparse.ArgumentParser) -> None:
    """Flags for a checkpoint's own geometry (a model fine-tuned at 32 px on 10 classes is not ImageNet at 224)."""
    g = parser.add_argument_group(
        "input geometry", "override what the checkpoint (its meta, or a timm config.json beside it) and the zoo say")
    g.add_argument("--input-size", type=_input_size, metavar="N|HxW", help="input height and width, e.g. 32 or 96x128")
    g.add_argument("--mean", type=_triple, metavar="R,G,B", help="normalisation mean, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=_triple, metavar="R,G,B", help="normalisation std, e.g. 0.229,0.224,0.225")
    g.add_argument("--labels", metavar="A,B,...|FILE", help="class names in output order, or a file with one per line")
    g.add_argument("--crop-pct", type=fraction, metavar="F", help="centre crop fraction (1: resize only, 0.875: 256->224)")
    g.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic", "lanczos"], help="resize filter")


def geometry(args: argparse.Namespace) -> dict:
    """The geometry flags given, as checkpoint meta entries (``Checkpoint.overrides``)."""
    out: dict = {}
    if args.input_size:
        out["input_size"] = [3, *args.input_size]
    for key in ("mean", "std", "crop_pct", "interpolation"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if args.labels:
        source = Path(args.labels)
        names = [ln.strip() for ln in source.read_text().splitlines()] if source.is_file() else args.labels.split(",")
        out["labels"] = [n.strip() for n in names if n.strip()]
        if not out["labels"]:
            raise BadInputError(f"--labels {args.labels!r} names no class; give a,b,... or a file with one per line")
    return out


def _input_size(text: str) -> list[int]:
    parts = text.lower().split("x")
    try:
        size = [int(p) for p in parts]
    except ValueError:
        size = []
    if len(size) not in (1, 2) or min(size, default=0) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give N or HxW with positive integers (e.g. 32)")
    return size * 2 if len(size) == 1 else size


def _triple(text: str) -> list[float]:
    values = [_number(v) for v in text.split(",") if v.strip()]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give 3 numbers (R,G,B), e.g. 0.485,0.456,0.406")
    return values
