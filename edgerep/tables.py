"""Plain-text tables for the terminal (no dependency: CI logs and ssh sessions read them too).

A leaf module: every command prints through it, and it imports nothing of edgerep.
"""

from __future__ import annotations

from typing import Sequence


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: set[int] | frozenset[int] = frozenset()
) -> str:
    """A column-aligned table; columns whose index is in ``right`` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def human(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23M' (metric prefixes, three significant digits)."""
    if n is None:
        return "n/a"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}" if isinstance(n, float) else f"{n}{unit}"
