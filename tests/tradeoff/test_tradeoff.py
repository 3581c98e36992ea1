"""The trade-off table: speed-ups, the Pareto front, the three file formats and the plot."""

from __future__ import annotations

import csv
import io
import json

import pytest

from edgerep.tradeoff.table import TradeoffRow, fill_speedups, mark_pareto, to_csv, to_json, to_markdown


def _row(target: str, precision: str, top1: float | None, ms: float | None, device: str = "host", **kw) -> TradeoffRow:
    return TradeoffRow(
        model="m", target=target, precision=precision, size_mb=1.0, top1=top1, agreement=kw.pop("agreement", None),
        latency_ms=ms, latency_p90_ms=None if ms is None else ms * 1.1, latency_kind="measured", device=device,
        runtime="rt", threads=1, **kw,
    )


def test_pareto_front_keeps_only_undominated_rows_per_device():
    rows = [
        _row("onnx", "fp32", 0.70, 10.0),  # most accurate
        _row("onnx", "int8", 0.69, 5.0),  # fastest
        _row("tflite", "fp32", 0.68, 12.0),  # slower and less accurate than onnx fp32: dominated
        _row("tflite", "int8", 0.69, 5.0),  # ties onnx int8 exactly: neither dominates the other
        _row("onnx", "fp32", 0.50, 50.0, device="pixel4"),  # alone on its device: on its front
        _row("onnx", "fp16", None, 3.0),  # no accuracy: never on the front
    ]
    mark_pareto(rows)
    assert [r.pareto for r in rows] == [True, True, False, True, True, False]


def test_accuracy_falls_back_to_agreement_without_labels():
    rows = [_row("onnx", "fp32", None, 10.0, agreement=1.0), _row("onnx", "int8", None, 4.0, agreement=0.9)]
    mark_pareto(rows)
    assert all(r.pareto for r in rows)


def test_speedup_is_against_fp32_of_same_model_target_device():
    rows = [_row("onnx", "fp32", 0.7, 10.0), _row("onnx", "int8", 0.7, 4.0), _row("tflite", "int8", 0.7, 5.0),
            _row("onnx", "int8", 0.7, 2.0, device="pixel4")]
    fill_speedups(rows)
    assert rows[0].speedup_vs_fp32 == pytest.approx(1.0)
    assert rows[1].speedup_vs_fp32 == pytest.approx(2.5)
    assert rows[2].speedup_vs_fp32 is None  # no tflite fp32 row to compare with
    assert rows[3].speedup_vs_fp32 is None


def test_formats_round_trip_the_rows():
    rows = [_row("onnx", "fp32", 0.7, 10.0), _row("onnx", "int8", None, None, status="eval failed")]
    mark_pareto(rows)
    md = to_markdown(rows).splitlines()
    assert len(md) == 2 + len(rows) and md[0].startswith("| model |") and "eval failed" in md[3]
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [p["precision"] for p in parsed] == ["fp32", "int8"] and parsed[0]["latency_ms"] == "10.0"
    assert json.loads(to_json(rows))[0]["pareto"] is True


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from edgerep.tradeoff.plot import plot_tradeoff

    rows = [_row("onnx", "fp32", 0.7, 10.0), _row("tflite", "int8", 0.69, 4.0),
            _row("onnx", "fp32", 0.7, 30.0, device="pixel4")]
    rows[2].latency_kind = "predicted"
    mark_pareto(rows)
    out = plot_tradeoff(rows, tmp_path / "tradeoff.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tradeoff.png"]  # no temporary file left
