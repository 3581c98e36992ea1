"""Small helpers shared by the command modules."""

from __future__ import annotations

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
