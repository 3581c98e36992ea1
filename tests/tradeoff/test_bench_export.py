"""bench/export.py on a tiny RepVGG net: every artifact is timed, and the ratios and the table come out right."""

import argparse
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import export as bench  # noqa: E402

from edgerep.proof.metrics import interleaved_times  # noqa: E402
from edgerep.proof.numerics import randomize_bn  # noqa: E402
from edgerep.reparam import reparameterize  # noqa: E402
from edgerep.reparam.blocks.repvgg import RepVGGBlock  # noqa: E402

QUICK = dict(threads=(1,), rounds=1, per_round=1, warmup=0)


def _tiny_case(size: int = 16) -> bench.Case:
    torch.manual_seed(0)
    train = nn.Sequential(RepVGGBlock(3, 8, stride=2), RepVGGBlock(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    train = randomize_bn(train, torch.Generator().manual_seed(0)).eval()
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    return bench.Case("tiny", size, "random", train, reparameterize(train).eval(), images)


def test_interleaved_times_alternates_callables():
    log = []
    samples = interleaved_times({"a": lambda: log.append("a"), "b": lambda: log.append("b")},
                                rounds=2, per_round=2, warmup=1)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 2
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}
    assert all(t >= 0 for v in samples.values() for t in v)


def test_model_arguments():
    assert bench.parse_model("repvgg_a0") == ("repvgg_a0", 224)
    assert bench.parse_model("mobileone_s0:96") == ("mobileone_s0", 96)
    assert bench.parse_model(bench.DEFAULT_MODEL) == (bench.DEFAULT_MODEL, 32)
    with pytest.raises(argparse.ArgumentTypeError, match="SIZE"):
        bench.parse_model("repvgg_a0:big")


def test_torch_forms_are_timed_and_compared():
    result = bench.bench_case(_tiny_case(), runtimes=("torch",), **QUICK)
    keys = [a["key"] for a in result["artifacts"]]
    assert keys == ["torch train fp32 (eager)", "torch deploy fp32 (eager)"]
    assert all(a["rel_err_vs_torch_deploy"] < 1e-5 for a in result["artifacts"])
    assert all(a["latency"]["1"]["n"] == 1 for a in result["artifacts"])
    ratio = result["threads"]["1"]["ratios"]["deploy_over_train"]
    assert set(ratio) == {"torch eager"} and ratio["torch eager"] > 0
    assert "torch deploy fp32 (eager)" in bench.format_table(result)


def test_ratios_are_medians_divided():
    lat = {k: {"median_ms": m} for k, m in [
        (bench.key("onnxruntime", "deploy", "fp32", "edgerep"), 2.0),
        (bench.key("onnxruntime", "deploy", "int8", "edgerep"), 1.0),
        (bench.key("onnxruntime", "deploy", "fp32", "plain"), 4.0),
    ]}
    assert bench.ratios(lat) == {"int8_speedup": {"onnxruntime": 2.0},
                                 "edgerep_over_plain_onnx": {"onnxruntime deploy fp32": 0.5}}


@pytest.mark.slow  # eight exports (two int8): 20-30 s on this shared 2-core machine
def test_every_runtime_on_a_tiny_model():
    result = bench.bench_case(_tiny_case(), runtimes=bench.RUNTIMES, threads=(1, 2), rounds=1, per_round=1, warmup=1)
    rows = {a["key"]: a for a in result["artifacts"]}
    assert len(rows) == 10
    for k, r in rows.items():
        assert set(r["latency"]) == {"1", "2"}, k
        assert r["rel_err_vs_torch_deploy"] < (0.2 if r["precision"] == "int8" else 1e-4), (k, r)
    ratios = result["threads"]["1"]["ratios"]
    assert len(ratios["deploy_over_train"]) == 4
    assert set(ratios["int8_speedup"]) == {"onnxruntime", "litert"}
    assert "onnxruntime deploy fp32" in ratios["edgerep_over_plain_onnx"]
    assert len(result["threads"]["2"]["ratios"]["two_threads_speedup"]) == 10
    # the deploy graph has fewer nodes than the train form's, whichever ONNX path made it
    for via in ("edgerep", "plain"):
        ops = {f: rows[bench.key("onnxruntime", f, "fp32", via)]["onnx_ops"]["total"] for f in ("train", "deploy")}
        assert ops["deploy"] < ops["train"], (via, ops)
