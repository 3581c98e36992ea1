"""The trade-off plot (edgerep/tradeoff/plot.py): renders headless, labels only the Pareto front, no label overlaps."""

from __future__ import annotations

import itertools

import pytest

from edgerep.tradeoff.table import TradeoffRow, mark_pareto

matplotlib = pytest.importorskip("matplotlib")


def _row(model: str, target: str, precision: str, top1: float, ms: float, device: str = "host",
         kind: str = "measured") -> TradeoffRow:
    return TradeoffRow(model, target, precision, 1.0, top1, None, ms, ms * 1.1, kind, device,
                       "onnxruntime" if target == "onnx" else target, 1)


def _crowded() -> list[TradeoffRow]:
    """A front of points packed close together (the unreadable line of the old plot), plus dominated rows."""
    rows = []
    for i, (target, precision) in enumerate(itertools.product(("onnx", "tflite", "executorch"), ("fp32", "int8"))):
        rows.append(_row(f"repvgg_a0_{i}", target, precision, 0.80 + 0.001 * i, 10.0 + 0.3 * i))
        rows.append(_row(f"repvgg_a0_{i}", target, precision, 0.70, 20.0 + i))  # dominated: not labelled
    for i, precision in enumerate(("fp16", "int8", "palettize6")):  # Core ML rows: predicted latency only
        rows.append(_row("repghostnet_100", "coreml", precision, 0.78 + 0.001 * i, 3.0 + 0.2 * i,
                         device="iphone12pro", kind="predicted"))
    mark_pareto(rows)
    return rows


def test_plot_labels_only_the_front_and_never_overlaps(tmp_path) -> None:
    from matplotlib.text import Text

    from edgerep.tradeoff.plot import draw, plot_tradeoff

    rows = _crowded()
    fig = draw(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split()[0] for ax in panels] == ["host", "iphone12pro"]  # one panel per device
    for ax, device in zip(panels, ("host", "iphone12pro")):
        labels = [t for t in ax.texts]
        front = [r for r in rows if r.device == device and r.pareto]
        assert sorted(t.get_text() for t in labels) == sorted(
            f"{r.model} {r.target} {r.precision}" + (" (predicted)" if r.latency_kind == "predicted" else "")
            for r in front)
        boxes = []
        for t in labels:  # the text itself, not its leader line
            t.update_positions(renderer)
            boxes.append(Text.get_window_extent(t, renderer))
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), "two labels overlap"
        assert len(front) >= 3  # the crowded case really is crowded
    assert "predicted" in panels[1].get_xlabel()
    out = plot_tradeoff(rows, tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["t.png"]
    matplotlib.pyplot.close(fig)


def test_colour_per_target_and_marker_per_precision() -> None:
    from edgerep.tradeoff.plot import draw

    rows = [_row("m", "onnx", "fp32", 0.8, 10.0), _row("m", "onnx", "int8", 0.79, 5.0),
            _row("m", "tflite", "int8", 0.78, 4.0)]
    mark_pareto(rows)
    fig = draw(rows)
    ax = fig.axes[0]
    colours = [tuple(c.get_edgecolor()[0]) for c in ax.collections]
    paths = [c.get_paths()[0].vertices.tobytes() for c in ax.collections]
    assert colours[0] == colours[1] != colours[2]  # onnx, onnx, tflite
    assert paths[0] != paths[1] == paths[2]  # fp32 circle, int8 triangles
    matplotlib.pyplot.close(fig)
