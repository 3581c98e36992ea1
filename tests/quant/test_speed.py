"""What ``edgerep export`` recommends from the latencies it measured (edgerep/quant/speed.py), without timing.

The issue-16 rule: int8 must never be slower than fp32 on the runtime edgerep recommends for a model. The
recommendation is the fastest artifact measured here; these tests pin that it can never be an int8 file slower
than its own runtime's fp32, and that a target whose int8 is slower is warned about, naming what to ship.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edgerep.quant import speed

TARGETS = ("onnx", "tflite")


def _report(monkeypatch, ms: dict[tuple[str, str], float]) -> speed.SpeedReport:
    monkeypatch.setattr(speed, "median_latencies", lambda artifacts: {k: ms[k] for k in artifacts})
    return speed.speed_report({k: Path(f"{k[0]}-{k[1]}") for k in ms})


def test_repghostnet_100_recommends_litert_int8_and_warns_about_onnxruntime(monkeypatch) -> None:
    """The medians of RepGhostNet-1.0x in bench/results/int8_speedup_families.json (1 thread, 224 px): onnxruntime
    int8 is slower than its fp32, LiteRT int8 is the fastest file, so that is what is recommended."""
    report = _report(monkeypatch, {("onnx", "fp32"): 5.8875, ("onnx", "int8"): 6.3015,
                                   ("tflite", "fp32"): 5.0095, ("tflite", "int8"): 3.5411})
    assert report.fastest == ("tflite", "int8")
    (warning,) = report.warnings()
    assert warning.startswith("onnx int8 is not faster than fp32 on this host (0.93x") and "ship tflite int8" in warning


def test_when_no_int8_is_faster_fp32_is_recommended(monkeypatch) -> None:
    report = _report(monkeypatch, {("onnx", "fp32"): 2.0, ("onnx", "int8"): 2.5,
                                   ("tflite", "fp32"): 3.0, ("tflite", "int8"): 3.1})
    assert report.fastest == ("onnx", "fp32")
    assert len(report.warnings()) == 2 and all("ship onnx fp32 here" in w for w in report.warnings())


@given(st.lists(st.floats(0.1, 100.0), min_size=4, max_size=4))
def test_the_recommended_runtime_never_runs_int8_slower_than_fp32(latencies) -> None:
    """For any measured medians: if the recommendation is an int8 file, its runtime's fp32 is not faster; and
    every target whose int8 is not faster than its fp32 gets a warning."""
    ms = dict(zip([(t, p) for t in TARGETS for p in ("fp32", "int8")], latencies, strict=True))
    report = speed.SpeedReport(ms)
    target, precision = report.fastest
    assert ms[(target, "int8")] >= ms[(target, precision)] <= ms[(target, "fp32")]
    warned = {w.split()[0] for w in report.warnings()}
    assert warned == {t for t in TARGETS if ms[(t, "int8")] >= ms[(t, "fp32")]}
