"""One row per (model, target, precision, device): size, accuracy, latency; and what is worth shipping.

A row is on the Pareto front of its device when no other row of that device is at least as accurate and
at least as fast while strictly better in one of the two: those are the only choices a user should weigh.
Latency is labelled ``measured`` or ``predicted`` everywhere it appears, never mixed silently.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields


@dataclass
class TradeoffRow:
    model: str
    target: str
    precision: str
    size_mb: float | None
    top1: float | None  # on the labelled images; None when the data has no labels
    agreement: float | None  # top-1 agreement with the fp32 PyTorch model
    latency_ms: float | None  # median
    latency_p90_ms: float | None
    latency_kind: str  # "measured" | "predicted" | "failed"
    device: str  # "host", a profile name, or ssh://... / adb:...
    runtime: str  # onnxruntime, litert, ...
    threads: int
    status: str = "ok"  # "ok", or why the row is incomplete (kept and marked, not dropped)
    speedup_vs_fp32: float | None = None
    pareto: bool = False
    node: str = ""  # the Ray node the latency was measured on (``--ray``); empty in a single-process run

    @property
    def accuracy(self) -> float | None:
        """What the plot and the front use: top-1 when labels exist, else agreement with fp32."""
        return self.top1 if self.top1 is not None else self.agreement


def fill_speedups(rows: list[TradeoffRow]) -> None:
    """Speed-up of each row against the fp32 artifact of the same model, target, device and threads."""
    fp32 = {
        (r.model, r.target, r.device, r.threads): r.latency_ms
        for r in rows
        if r.precision == "fp32" and r.latency_ms
    }
    for r in rows:
        base = fp32.get((r.model, r.target, r.device, r.threads))
        r.speedup_vs_fp32 = base / r.latency_ms if base and r.latency_ms else None


def mark_pareto(rows: list[TradeoffRow]) -> None:
    """Mark the rows no other row of the same device dominates (faster and at least as accurate)."""
    for r in rows:
        r.pareto = False
        if r.latency_ms is None or r.accuracy is None:
            continue
        r.pareto = not any(
            o is not r
            and o.device == r.device
            and o.latency_ms is not None
            and o.accuracy is not None
            and o.latency_ms <= r.latency_ms
            and o.accuracy >= r.accuracy
            and (o.latency_ms < r.latency_ms or o.accuracy > r.accuracy)
            for o in rows
        )


_HEADERS = ("model", "target", "precision", "size MB", "top-1", "agreement", "latency ms (median)", "p90 ms",
            "kind", "device", "runtime", "threads", "speed-up vs fp32", "Pareto", "status")


def _cells(r: TradeoffRow) -> list[str]:
    def num(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    return [
        r.model, r.target, r.precision, num(r.size_mb, ".2f"), num(r.top1, ".3f"), num(r.agreement, ".3f"),
        num(r.latency_ms, ".2f"), num(r.latency_p90_ms, ".2f"), r.latency_kind, r.device, r.runtime,
        str(r.threads), num(r.speedup_vs_fp32, ".2f") + ("x" if r.speedup_vs_fp32 else ""),
        "*" if r.pareto else "", r.status,
    ]


def to_markdown(rows: list[TradeoffRow]) -> str:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[TradeoffRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[f.name for f in fields(TradeoffRow)], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    return out.getvalue()


def to_json(rows: list[TradeoffRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2) + "\n"


def terminal_table(rows: list[TradeoffRow]) -> str:
    from ..tables import table

    keep = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14)
    return table([_HEADERS[i] for i in keep], [[_cells(r)[i] for i in keep] for r in rows], right={3, 4, 5, 6, 7, 10})
