"""The Pareto plot: accuracy against latency, one colour per target, one panel per device.

A person choosing what to ship looks for the upper-left corner; the front is drawn as a step line so the
dominated artifacts are visibly off it. Predicted latencies get hollow markers and a panel title that says so.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import require
from .table import TradeoffRow

_COLOURS = {"onnx": "#1f77b4", "tflite": "#ff7f0e", "coreml": "#2ca02c", "executorch": "#d62728", "torch": "#7f7f7f"}
_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "w8": "v", "palettize8": "D", "palettize6": "P", "palettize4": "X"}


def plot_tradeoff(rows: list[TradeoffRow], path: str | Path, title: str = "accuracy vs latency") -> Path:
    """Write the plot (PNG, or any suffix matplotlib knows) atomically and return its path."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [r for r in rows if r.latency_ms is not None and r.accuracy is not None]
    devices = sorted({r.device for r in plotted}) or ["(no timed rows)"]
    fig, axes = plt.subplots(1, len(devices), figsize=(7.2 * len(devices), 4.8), squeeze=False)
    for ax, device in zip(axes[0], devices):
        _panel(ax, [r for r in plotted if r.device == device], device)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _panel(ax, rows: list[TradeoffRow], device: str) -> None:
    from matplotlib.ticker import ScalarFormatter

    if not rows:
        ax.set_axis_off()
        return
    kinds = sorted({r.latency_kind for r in rows})
    labelled = all(r.top1 is not None for r in rows)
    for r in rows:
        colour = _COLOURS.get(r.target, "#9467bd")
        hollow = r.latency_kind == "predicted"
        ax.scatter(
            r.latency_ms, r.accuracy, s=70 if r.pareto else 40, marker=_MARKERS.get(r.precision, "o"),
            facecolors="none" if hollow else colour, edgecolors=colour, linewidths=1.5, zorder=3,
        )
        ax.annotate(f"{r.model} {r.precision}", (r.latency_ms, r.accuracy), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.latency_ms)
    if len(front) > 1:
        ax.step([r.latency_ms for r in front], [r.accuracy for r in front], where="post", color="k", alpha=0.4,
                linewidth=1, zorder=2, label="Pareto front")
    for target in sorted({r.target for r in rows}):
        ax.scatter([], [], color=_COLOURS.get(target, "#9467bd"), label=target)
    for precision in sorted({r.precision for r in rows}):
        ax.scatter([], [], color="k", marker=_MARKERS.get(precision, "o"), facecolors="none", label=precision)
    lat = [r.latency_ms for r in rows]
    if max(lat) > 10 * min(lat):  # a wide range reads better on a log axis; a narrow one in plain ms
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel(f"latency, ms ({' / '.join(kinds)}, median)")
    ax.set_ylabel("top-1" if labelled else "top-1 agreement with fp32")
    ax.set_title(f"{device} ({', '.join(sorted({f'{r.runtime} {r.threads}t' for r in rows}))})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
