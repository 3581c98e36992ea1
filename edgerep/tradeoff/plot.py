"""The trade-off plot: top-1 against latency, one panel per device, colour per target, marker per precision.

A person choosing what to ship looks for the upper-left corner. The Pareto front is drawn as a step line and
only its points are labelled (the rest are in the table beside the plot), each label placed where it overlaps
no other label (``_place_labels`` measures the rendered text boxes). Predicted latencies (phone profiles, Core
ML rows predicted from the iPhone profile) get hollow markers, "predicted" in their label and in the axis title.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import require
from .table import TradeoffRow

_COLOURS = {"onnx": "#1f77b4", "tflite": "#ff7f0e", "coreml": "#2ca02c", "executorch": "#d62728", "torch": "#7f7f7f"}
_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "w8": "v", "palettize8": "D", "palettize6": "P", "palettize4": "X"}
# Label positions tried around a point (offset in points), nearest first; rings grow until a free place is found.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (0, 1), (-1, 0), (0, -1))
_RINGS = 12


def plot_tradeoff(rows: list[TradeoffRow], path: str | Path, title: str = "top-1 vs latency") -> Path:
    """Write the plot (PNG, or any suffix matplotlib knows) atomically and return its path."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(rows, title)
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


def draw(rows: list[TradeoffRow], title: str = "top-1 vs latency"):
    """The matplotlib figure (Agg): one panel per device, front labels already placed without overlap."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [r for r in rows if r.latency_ms is not None and r.accuracy is not None]
    devices = sorted({r.device for r in plotted}, key=lambda d: (d != "host", d)) or ["(no timed rows)"]
    fig, axes = plt.subplots(1, len(devices), figsize=(6.4 * len(devices) + 1.6, 5.0), squeeze=False)
    fronts = [_panel(ax, [r for r in plotted if r.device == device], device) for ax, device in zip(axes[0], devices)]
    _legend(fig, plotted)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    fig.canvas.draw()  # final axis limits (autoscaling is lazy), so label boxes are measured where they end up
    for ax, front in zip(axes[0], fronts):  # after the layout: label boxes are measured where they will be drawn
        _place_labels(fig, ax, front)
    return fig


def _panel(ax, rows: list[TradeoffRow], device: str) -> list[TradeoffRow]:
    """Draw one device's points and front; return the front (labelled once the layout is final)."""
    from matplotlib.ticker import ScalarFormatter

    if not rows:
        ax.set_axis_off()
        return []
    for r in rows:
        colour = _COLOURS.get(r.target, "#9467bd")
        ax.scatter(r.latency_ms, r.accuracy, s=70 if r.pareto else 40, marker=_MARKERS.get(r.precision, "o"),
                   facecolors="none" if r.latency_kind == "predicted" else colour, edgecolors=colour,
                   linewidths=1.5, zorder=3)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.latency_ms)
    if len(front) > 1:
        ax.step([r.latency_ms for r in front], [r.accuracy for r in front], where="post", color="k", alpha=0.45,
                linewidth=1, zorder=2)
    lat = [r.latency_ms for r in rows]
    if max(lat) > 10 * min(lat):  # a wide range reads better on a log axis; a narrow one in plain ms
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.margins(x=0.2, y=0.15)
    kinds = " / ".join(sorted({r.latency_kind for r in rows}))
    ax.set_xlabel(f"latency, ms, median ({kinds})")
    ax.set_ylabel("top-1" if all(r.top1 is not None for r in rows) else "top-1 (agreement with fp32 where unlabelled)")
    ax.set_title(f"{device} ({', '.join(sorted({f'{r.runtime} {r.threads}t' for r in rows}))})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return front


def _label(r: TradeoffRow) -> str:
    return f"{r.model} {r.target} {r.precision}" + (" (predicted)" if r.latency_kind == "predicted" else "")


def _legend(fig, rows: list[TradeoffRow]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker="o", color=_COLOURS.get(t, "#9467bd"), label=t)
               for t in sorted({r.target for r in rows})]
    handles += [Line2D([], [], linestyle="", marker=_MARKERS.get(p, "o"), color="k", markerfacecolor="none", label=p)
                for p in sorted({r.precision for r in rows})]
    handles.append(Line2D([], [], color="k", alpha=0.45, label="Pareto front"))
    if any(r.latency_kind == "predicted" for r in rows):
        handles.append(Line2D([], [], linestyle="", marker="o", color="k", markerfacecolor="none",
                              label="hollow: predicted latency"))
    fig.legend(handles=handles, loc="upper right", fontsize=7, frameon=False)


def _place_labels(fig, ax, front: list[TradeoffRow]) -> list:
    """Annotate the front points, each at the nearest offset where its box covers no label and no front point."""
    renderer = fig.canvas.get_renderer()
    placed, texts = [], []
    points = [(r.latency_ms, r.accuracy, _label(r)) for r in front]
    taken = [ax.transData.transform((x, y)) for x, y, _ in points]
    for x, y, text in points:
        for ring in range(1, _RINGS + 1):
            found = None
            for dx, dy in _DIRECTIONS:
                ann = ax.annotate(text, (x, y), xytext=(dx * 6 * ring, dy * 5 * ring), textcoords="offset points",
                                  fontsize=7, ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                                  arrowprops={"arrowstyle": "-", "alpha": 0.4, "linewidth": 0.6} if ring > 1 else None)
                box = _text_box(ann, renderer)
                if not any(box.overlaps(b) for b in placed) and not any(box.contains(*p) for p in taken):
                    found = (ann, box)
                    break
                ann.remove()
            if found:
                break
        step = _RINGS
        while found is None and step < 100 * _RINGS:  # crowded: climb above every placed label, with a leader line to the point
            step += 1
            ann = ax.annotate(text, (x, y), xytext=(6, 5 * step), textcoords="offset points", fontsize=7,
                              arrowprops={"arrowstyle": "-", "alpha": 0.4, "linewidth": 0.6})
            box = _text_box(ann, renderer)
            if not any(box.overlaps(b) for b in placed):
                found = (ann, box)
            else:
                ann.remove()
        texts.append(found[0])
        placed.append(found[1])
    return texts


def _text_box(annotation, renderer):
    """The label's own text box (an Annotation's extent also covers its leader line), with a little margin."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)  # place the text at its offset (else its box is where it was created)
    return Text.get_window_extent(annotation, renderer).expanded(1.05, 1.15)
