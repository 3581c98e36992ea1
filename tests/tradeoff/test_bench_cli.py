"""`edgerep bench`: the whole path on the shipped model, and bad input refused before any slow work."""

from __future__ import annotations

import json

import pytest

from edgerep.cli import main


def test_bench_shipped_model_writes_table_and_plot(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    code = main(["bench", "--target", "onnx", "--precision", "fp32", "--device", "host,pixel4",
                 "-o", str(tmp_path), "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["device"], r["latency_kind"]) for r in rows] == [("host", "measured"), ("pixel4", "predicted")]
    for r in rows:
        assert r["status"] == "ok" and r["latency_ms"] > 0 and r["top1"] is not None and r["agreement"] == 1.0
    assert sorted(p.name for p in tmp_path.glob("tradeoff.*")) == [
        "tradeoff.csv", "tradeoff.json", "tradeoff.md", "tradeoff.png"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "nokia3310"], "unknown device 'nokia3310'"),
        (["--threads", "0"], "--threads '0'"),
        (["--precision", "int3"], "int3"),
        (["not_a_model"], "unknown model 'not_a_model'"),
    ],
)
def test_bench_bad_input_exits_2_before_work(tmp_path, capsys, argv, message):
    assert main(["bench", *argv, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(tmp_path.glob("tradeoff.*"))


def test_bench_takes_the_input_geometry_flags(tmp_path, capsys):
    """A bare zoo name at the --input-size given (not its 224 px default): the artifact's input is 48x48."""
    pytest.importorskip("onnxruntime")
    code = main(["bench", "repvgg_a0_narrow", "--input-size", "48", "--target", "onnx", "--precision", "fp32",
                 "--device", "host", "--no-plot", "-o", str(tmp_path), "--json"])
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)
    manifest = json.loads(next(tmp_path.rglob("*.onnx.json")).read_text())
    assert row["status"] == "random weights" and manifest["input"]["shape"] == [1, 3, 48, 48]
