"""Graph cost read from ONNX / TFLite files, device profile files, host timing structure, `edgerep profile` errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from edgerep.cli import main
from edgerep.errors import BadInputError
from edgerep.profile.graph_cost import graph_cost
from edgerep.profile.host import profile_artifact, profile_torch
from edgerep.profile.profiles import (
    HOST,
    all_profiles,
    get_profile,
    parse_profile,
    profile_names,
)
from edgerep.proof.metrics import count_macs
from edgerep.resources import data_folder

SHAPE = (3, 32, 32)


class Tiny(nn.Module):
    """One of each kind the cost model tells apart: dense 3x3, depthwise, pointwise, grouped conv, pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, 2, 1, groups=4)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.pw(self.dw(y) + y))
        y = self.grouped(y).mean((2, 3))
        return self.fc(y)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(tiny, torch.zeros(1, *SHAPE), str(path), dynamo=False, input_names=["image"])
    return path


def _handmade_tflite(path: Path) -> Path:
    """Tiny as a TFLite flatbuffer written op by op (NHWC, weights [O, kh, kw, I/groups] as converters write them):
    the fast check of the flatbuffer reader; ``tiny_tflite`` (a real conversion) is the slow one."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    import flatbuffers
    import numpy as np

    ops = schema.BuiltinOperator
    shapes = [  # (shape, is weight)
        ([1, 32, 32, 3], False), ([16, 3, 3, 3], True), ([1, 16, 16, 16], False),      # 0-2 stem
        ([1, 3, 3, 16], True), ([1, 16, 16, 16], False), ([1, 16, 16, 16], False),     # 3-5 dw, add
        ([32, 1, 1, 16], True), ([1, 16, 16, 32], False),                               # 6-7 pw
        ([32, 3, 3, 8], True), ([1, 8, 8, 32], False), ([2], True), ([1, 32], False),   # 8-11 grouped, mean
        ([10, 32], True), ([1, 10], False),                                             # 12-13 fc
    ]
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    sub = schema.SubGraphT()
    sub.tensors = []
    for i, (shape, weight) in enumerate(shapes):
        t = schema.TensorT()
        t.shape, t.type, t.name = shape, schema.TensorType.FLOAT32, f"t{i}"
        t.buffer = 0
        if weight:
            buf = schema.BufferT()
            buf.data = np.zeros(int(np.prod(shape)) * 4, np.uint8)
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1
        sub.tensors.append(t)
    layers = [(ops.CONV_2D, [0, 1], [2]), (ops.DEPTHWISE_CONV_2D, [2, 3], [4]), (ops.ADD, [4, 2], [5]),
              (ops.CONV_2D, [5, 6], [7]), (ops.CONV_2D, [7, 8], [9]), (ops.MEAN, [9, 10], [11]),
              (ops.FULLY_CONNECTED, [11, 12], [13])]
    codes = sorted({code for code, _, _ in layers})
    model.operatorCodes = []
    for code in codes:
        oc = schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode = code, min(code, 127)
        model.operatorCodes.append(oc)
    sub.operators = []
    for code, ins, outs in layers:
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(code), ins, outs
        sub.operators.append(op)
    sub.inputs, sub.outputs = [0], [13]
    model.subgraphs = [sub]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


@pytest.fixture(scope="module")
def tiny_tflite(tiny, tmp_path_factory) -> Path:
    litert_torch = pytest.importorskip("litert_torch")
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    litert_torch.convert(tiny, (torch.zeros(1, *SHAPE),)).export(str(path))
    return path


def test_onnx_graph_cost_equals_torch_macs(tiny, tiny_onnx):
    cost = graph_cost(tiny_onnx)
    assert cost.macs == count_macs(tiny, SHAPE)
    kinds = cost.by_kind()
    assert kinds["conv"]["macs"] == 16 * 16 * 16 * 27 + 32 * 8 * 8 * 9 * 8  # stem + grouped (8 in-ch per group)
    assert kinds["depthwise"]["macs"] == 16 * 16 * 16 * 9
    assert kinds["pointwise"]["macs"] == 32 * 16 * 16 * 16
    assert kinds["fc"]["macs"] == 320
    assert cost.input_shape == (1, *SHAPE) and cost.precision == "fp32"
    # weights: fp32 bytes of every parameter (BN folded into the stem conv by the exporter or kept: both counted)
    assert sum(layer.weight_bytes for layer in cost.layers) >= 4 * sum(
        p.numel() for n, p in tiny.named_parameters() if not n.startswith("stem.1"))


def test_handmade_tflite_graph_cost_equals_torch_macs(tiny, tmp_path):
    cost = graph_cost(_handmade_tflite(tmp_path / "tiny.tflite"))
    assert cost.macs == count_macs(tiny, SHAPE)
    kinds = cost.by_kind()
    assert kinds["depthwise"]["macs"] == 16 * 16 * 16 * 9 and kinds["pointwise"]["macs"] == 32 * 16 * 16 * 16
    assert kinds["conv"]["ops"] == 2 and kinds["elementwise"]["ops"] == 1 and kinds["pool"]["ops"] == 1
    assert cost.input_shape == (1, 32, 32, 3) and cost.precision == "fp32"
    assert sum(layer.weight_bytes for layer in cost.layers) == 4 * (16 * 27 + 9 * 16 + 32 * 16 + 32 * 72 + 2 + 320)


@pytest.mark.slow  # a real litert-torch conversion: ~20-40 s here
def test_converted_tflite_graph_cost_equals_torch_macs(tiny, tiny_tflite):
    cost = graph_cost(tiny_tflite)
    assert cost.macs == count_macs(tiny, SHAPE)
    assert cost.by_kind()["depthwise"]["macs"] == 16 * 16 * 16 * 9
    assert cost.format == "tflite" and cost.precision == "fp32"


def test_graph_cost_bad_files(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        graph_cost(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(BadInputError, match="not a readable ONNX"):
        graph_cost(junk)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(BadInputError, match=r"\.onnx, \.tflite or \.mlpackage"):
        graph_cost(other)


# ------------------------------------------------------------------------------------------------ profiles


def test_every_shipped_profile_loads_and_cites_its_figures():
    names = profile_names()
    for required in ("pixel1", "pixel3", "pixel4", "pixel7", "galaxy_s23", "iphone12pro", "rpi4", "rpi5", HOST):
        assert required in names
    for p in all_profiles():
        assert p.cores >= 1 and p.bandwidth_gbs > 0 and p.memory_source
        assert all(c.source for c in p.clusters)
        assert all(c.source and c.ms > 0 for c in p.calibration)
        raw = tomllib.loads(p.source.read_text())
        assert all(c.get("source") for c in raw.get("calibration", []) + raw.get("published", []))
    assert len(get_profile("pixel4").calibration) >= 3


def test_profile_schema_rejects_unsourced_or_unknown(tmp_path):
    raw = tomllib.loads((data_folder("device_profiles") / "pixel4.toml").read_text())
    del raw["calibration"][0]["source"]
    with pytest.raises(ValueError, match="no source"):
        parse_profile(raw)
    raw = tomllib.loads((data_folder("device_profiles") / "pixel4.toml").read_text())
    raw["calibration"][0]["model"] = "resnet9000"
    with pytest.raises(ValueError, match="not a reference model"):
        parse_profile(raw)
    raw = tomllib.loads((data_folder("device_profiles") / "pixel4.toml").read_text())
    del raw["memory"]["bandwidth_gbs"]
    with pytest.raises(KeyError):
        parse_profile(raw)


def test_used_cores_pick_the_fastest_first():
    p = get_profile("pixel4")
    assert [c.ghz for c in p.used_cores(4)] == [2.84, 2.42, 2.42, 2.42]
    assert p.peak_macs(4, "int8") == 4 * p.peak_macs(4, "fp32")
    with pytest.raises(BadInputError, match="between 1 and 8"):
        p.used_cores(9)


def test_host_profile_describes_this_cpu():
    host = get_profile(HOST)
    assert host.cores >= 1 and host.clusters[0].estimate
    assert host.description.startswith("this machine")


# -------------------------------------------------------------------------------------------- host timing


def test_host_profiling_structure(tiny_onnx):
    r = profile_artifact(tiny_onnx, threads=(1,), rounds=2, per_round=2, warmup=1, layers=True)
    assert r.label == "measured" and r.runtime.startswith("onnxruntime")
    assert r.input_shape == [1, *SHAPE]
    (t,) = r.timings
    assert t.threads == 1 and t.runs == 4 and 0 < t.min_ms <= t.median_ms <= t.max_ms
    assert r.peak_memory_mb is not None and r.peak_memory_mb >= 0
    assert r.layers and {"name", "op", "ms"} <= set(r.layers[0])
    assert {"model", "vector_flags", "logical_cpus"} <= set(r.cpu)
    json.dumps(r.to_dict())


@pytest.mark.slow  # a second runtime in a second subprocess: ~10 s on a loaded 2-core machine
def test_host_profiling_tflite_pinned(tiny_tflite):
    r = profile_artifact(tiny_tflite, threads=(1,), cores=[0], rounds=2, per_round=1, warmup=1, layers=True)
    assert r.runtime.startswith("ai-edge-litert") and r.cores == [0] and r.layers is None
    assert any("not reachable from Python" in n for n in r.notes)


def test_torch_reference_structure(tiny):
    r = profile_torch(tiny, SHAPE, threads=(1,), rounds=2, per_round=1, warmup=1)
    assert r.runtime == "torch" and r.timings[0].runs == 2 and r.peak_memory_mb is None


@pytest.mark.slow  # one more subprocess
def test_host_profiling_unrunnable_artifact(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="onnxruntime cannot run it"):
        profile_artifact(junk, rounds=1, per_round=1, warmup=1)


def test_host_profiling_bad_input(tmp_path, tiny_onnx):
    (tmp_path / "m.mlpackage").mkdir()
    with pytest.raises(BadInputError, match="macOS"):
        profile_artifact(tmp_path / "m.mlpackage")
    with pytest.raises(BadInputError, match="logical CPUs"):
        profile_artifact(tiny_onnx, threads=(999,))
    with pytest.raises(BadInputError, match="may use cores"):
        profile_artifact(tiny_onnx, cores=[999])


# ----------------------------------------------------------------------------------------------------- CLI


def test_cli_unknown_device_one_line(capsys, tiny_onnx):
    assert main(["profile", str(tiny_onnx), "--device", "pixel99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown device 'pixel99'" in err[0] and "pixel4" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["profile"], "give an .onnx or .tflite file"),
    (["profile", "nowhere.onnx", "--device", "pixel4"], "does not exist"),
    (["profile", "x.onnx", "--device", "pixel4", "--threads", "two"], "not a whole number"),
    (["profile", "x.onnx", "--device", "pixel4", "--cores", "0"], "--cores pins threads on this host"),
])
def test_cli_bad_input(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_predict_json(capsys, tiny_onnx):
    assert main(["profile", str(tiny_onnx), "--device", "pixel7", "--threads", "2", "--layers", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["label"] == "predicted" and out["device"] == "pixel7" and out["threads"] == 2
    assert out["latency_ms"] > 0 and len(out["layers"]) == 3 and out["leave_one_out"]["points"] > 0


def test_cli_list(capsys):
    assert main(["profile", "--list"]) == 0
    out = capsys.readouterr().out
    assert "pixel4" in out and "rpi5" in out and "host" in out
