"""Core ML graph cost from the MIL program (no macOS runtime): MACs equal PyTorch's count and the ONNX export's cost
in every precision edgerep writes (fp32, fp16, W8A8 int8, w8, palettes), weights count their stored bytes, W8A8's
quantize / dequantize ops are costed work; a broken package is one line; `edgerep profile` and `edgerep bench`
give Core ML a latency labelled predicted on a device profile, and none on the host."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'edgerep[coreml]')")

from edgerep.backends.base import ExportRequest
from edgerep.backends.coreml import BACKEND as COREML
from edgerep.backends.onnx import BACKEND as ONNX
from edgerep.cli import main
from edgerep.errors import BadInputError
from edgerep.profile import get_profile, graph_cost, predict
from edgerep.proof.metrics import count_macs
from edgerep.proof.numerics import randomize_bn
from edgerep.reparam import reparameterize
from edgerep.zoo import create_model

SHAPE = (1, 3, 32, 32)
PRECISIONS = ("fp32", "fp16", "int8", "w8", "palettize8")
IOS18 = {"minimum_deployment_target": "iOS18"}
VARIANTS = {p: (p, {}) for p in PRECISIONS} | {"int8_ios18": ("int8", IOS18), "palettize4": ("palettize4", IOS18)}
"""Name -> (precision, options): iOS18 int8 weights are constexpr_blockwise_shift_scale, 4-bit palettes grouped."""


class SE(nn.Module):
    """Squeeze-excite as RepGhostNet / MobileNetV3 write it: mean, two 1x1 convs, hard-sigmoid gate."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


def small_net() -> nn.Module:
    """Dense 3x3 (strided), depthwise, pointwise, SE and linear layers; two weights big enough to be compressed."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1, 1, groups=32), nn.ReLU(),
        nn.Conv2d(32, 64, 1), nn.ReLU(), SE(64),
        nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()


def zoo_net(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=10), torch.Generator().manual_seed(0)).eval()
    return reparameterize(model).eval()


def _export(model: nn.Module, backend, precision: str, path: Path, options: dict | None = None) -> Path:
    calibration = torch.randn(4, *SHAPE[1:]) if precision == "int8" else None
    backend.export(model, ExportRequest(SHAPE, precision, calibration=calibration, options=options or {}), path)
    return path


def _close(a: int, b: int) -> bool:
    return abs(a - b) <= 0.01 * b


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[nn.Module, dict[str, Path], Path]:
    model, folder = small_net(), tmp_path_factory.mktemp("mil")
    packages = {v: _export(model, COREML, p, folder / f"{v}.mlpackage", o) for v, (p, o) in VARIANTS.items()}
    return model, packages, _export(model, ONNX, "fp32", folder / "small.onnx")


@pytest.mark.parametrize("variant", VARIANTS)
def test_small_net_costs_like_pytorch_and_onnx(small, variant):
    model, packages, onnx = small
    precision = VARIANTS[variant][0]
    cost = graph_cost(packages[variant])
    assert cost.format == "coreml" and cost.input_shape == SHAPE
    assert not cost.partial, cost.uncosted
    assert cost.macs == count_macs(model, SHAPE[1:])
    assert _close(cost.macs, graph_cost(onnx).macs)
    assert cost.precision == ("fp32" if precision == "fp32" else "fp16")
    kernels = {lc.kernel for lc in cost.costed}
    assert {"conv3x3s2", "depthwise3x3s1", "pointwise", "conv3x3s1", "fc", "act:hardsigmoid", "mul",
            "pool:global"} <= kernels
    assert {lc.op for lc in cost.layers if lc.kind == "fused"} == {"relu"}  # the ReLUs after convs fold into them
    requant = [lc for lc in cost.layers if lc.kind == "requant"]
    assert bool(requant) == (precision == "int8")  # W8A8's quantize / dequantize pairs are work, not free
    assert all(lc.elements > 0 and lc.act_bytes > 0 for lc in requant)
    assert any("MIL program" in n for n in cost.notes)


def test_weights_count_their_stored_bytes(small):
    _, packages, _ = small

    def big_conv(precision: str):  # the 64 -> 64 3x3 conv: 36,864 weights
        return next(lc for lc in graph_cost(packages[precision]).layers if lc.kernel == "conv3x3s1")

    fp32, fp16 = big_conv("fp32").weight_bytes, big_conv("fp16").weight_bytes
    assert fp32 >= 4 * 36864 and fp16 >= 2 * 36864
    for compressed, bits in (("w8", 8), ("int8", 8), ("int8_ios18", 8), ("palettize8", 8), ("palettize4", 4)):
        # nbits per weight plus the scales or palettes
        assert 36864 * bits / 8 <= big_conv(compressed).weight_bytes < (bits / 16 + 0.1) * fp16, compressed
    ops = {v: {lc.op for lc in graph_cost(packages[v]).layers} for v in ("int8", "int8_ios18", "palettize4")}
    assert "constexpr_affine_dequantize" in ops["int8"] and "constexpr_blockwise_shift_scale" in ops["int8_ios18"]
    assert "constexpr_lut_to_dense" in ops["palettize4"]
    fp16_act = big_conv("fp16").act_bytes
    assert big_conv("fp32").act_bytes == 2 * fp16_act  # activations in their MIL dtype


def test_repvgg_deploy_model_costs_like_pytorch_and_onnx(tmp_path):
    model = zoo_net("repvgg_a0_narrow")
    cost = graph_cost(_export(model, COREML, "fp16", tmp_path / "m.mlpackage"))
    assert not cost.partial and cost.precision == "fp16"
    assert cost.macs == count_macs(model, SHAPE[1:])
    assert _close(cost.macs, graph_cost(_export(model, ONNX, "fp32", tmp_path / "m.onnx")).macs)


@pytest.mark.slow  # two zoo models in four precisions: about two minutes of conversion and calibration here
@pytest.mark.parametrize("name", ["repghostnet_050", "repvgg_a0_narrow"])
def test_zoo_deploy_models_cost_like_pytorch_and_onnx(name, tmp_path):
    model = zoo_net(name)
    torch_macs = count_macs(model, SHAPE[1:])
    onnx_macs = graph_cost(_export(model, ONNX, "fp32", tmp_path / "m.onnx")).macs
    for precision in ("fp32", "fp16", "int8", "palettize8"):
        cost = graph_cost(_export(model, COREML, precision, tmp_path / f"{precision}.mlpackage"))
        assert not cost.partial, (precision, cost.uncosted)
        assert _close(cost.macs, torch_macs) and _close(cost.macs, onnx_macs), precision


@pytest.mark.parametrize(("damage", "message"), [
    ("model.mlmodel", "not a readable Core ML package"),  # the program's protobuf
    ("weight.bin", "its MIL program cannot be read"),  # the weights, cut short
])
def test_corrupted_package_is_one_line(small, tmp_path, damage, message):
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(small[1]["int8"], broken)
    [part] = broken.rglob(damage)
    part.write_bytes(part.read_bytes()[:64])
    with pytest.raises(BadInputError, match=message) as err:
        graph_cost(broken)
    assert "\n" not in str(err.value)
    with pytest.raises(BadInputError, match="does not exist"):
        graph_cost(tmp_path / "missing.mlpackage")


def test_predicted_for_a_device_profile_only(small):
    _, packages, onnx = small
    iphone = get_profile("iphone12pro")
    fp32 = predict(graph_cost(packages["fp32"]), iphone, 1)
    fp16 = predict(graph_cost(packages["fp16"]), iphone, 1)
    int8 = predict(graph_cost(packages["int8"]), iphone, 1)
    assert fp32.label == fp16.label == "predicted" and fp32.ms > 0
    assert fp32.precision == "fp32" and fp16.precision == "fp16" and fp16.fit.precision == "fp32"
    assert any("fp32 fit" in n for n in fp16.notes) and any("Neural Engine" in n for n in fp16.notes)
    fp16_conv = sum(ms for lc, ms in fp16.layers if lc.kind in ("conv", "pointwise", "depthwise"))
    fp32_conv = sum(ms for lc, ms in fp32.layers if lc.kind in ("conv", "pointwise", "depthwise"))
    assert fp16_conv < fp32_conv  # half the bytes, the same MACs (the whole graph adds two input / output casts)
    assert int8.ms > fp16.ms  # the quantize / dequantize ops cost time on the CPU
    assert fp32.ms == pytest.approx(predict(graph_cost(onnx), iphone, 1).ms, rel=0.5)  # same graph, other front end


def test_cli_profile_mlpackage_json(small, capsys):
    package = small[1]["fp16"]
    assert main(["profile", str(package), "--device", "iphone12pro", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["label"] == "predicted" and out["device"] == "iphone12pro" and out["latency_ms"] > 0
    assert out["precision"] == "fp16" and any("MIL program" in n for n in out["notes"])
    assert main(["profile", str(package)]) == 2  # the host measures, and cannot run Core ML
    err = capsys.readouterr().err
    assert "cannot be measured here" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_tradeoff_coreml_rows_predicted_on_profiles_not_on_host(small, tmp_path):
    from edgerep.tradeoff.run import Exported, make_row, measure

    _, packages, _ = small
    rows = []
    for precision in ("fp16", "int8"):
        e = Exported("small", "coreml", precision, 0.1, None, None, packages[precision].name, "ok")
        for device in ("host", "iphone12pro"):
            lat, failure = measure(packages[precision], device, 1, precision)
            rows.append(make_row(e, device, 1, lat, failure))
    host = [r for r in rows if r.device == "host"]
    phone = [r for r in rows if r.device == "iphone12pro"]
    assert all(r.latency_ms is None and "cannot be measured here" in r.status for r in host)
    assert all(r.latency_kind == "predicted" and r.latency_ms > 0 and "Core ML" in r.runtime for r in phone)
    lat, _ = measure(packages["int8"], "iphone12pro", 1, "int8")
    assert "exported as int8; the graph computes in fp16" in lat.notes  # W8A8 runs fp16 kernels on the CPU


@pytest.mark.slow  # export, validate and evaluate the shipped model through Core ML: about a minute here
def test_bench_coreml_rows(tmp_path, capsys):
    assert main(["bench", "--target", "coreml", "--precision", "fp16", "--device", "host,iphone12pro",
                 "-o", str(tmp_path), "--json"]) == 0
    rows = {r["device"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["iphone12pro"]["latency_kind"] == "predicted" and rows["iphone12pro"]["latency_ms"] > 0
    assert rows["iphone12pro"]["status"] == "ok" and rows["iphone12pro"]["top1"] is not None
    assert rows["host"]["latency_ms"] is None and "cannot be measured here" in rows["host"]["status"]


def test_unknown_op_is_named_not_a_silent_zero(tmp_path):
    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        y = mb.conv_transpose(x=x, weight=np.ones((4, 4, 3, 3), np.float32), name="up")
        return mb.relu(x=y, name="act")

    path = tmp_path / "up.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
               compute_precision=ct.precision.FLOAT32).save(str(path))
    cost = graph_cost(path)
    assert cost.partial and len(cost.uncosted) == 1 and cost.uncosted[0].endswith("(conv_transpose)")
    assert any("PARTIAL" in n for n in predict(cost, get_profile("iphone12pro"), 1).notes)


def test_device_file_kernel_tables_refuse_core_ml(small, capsys, monkeypatch):
    import edgerep.profile.calibrate as calibrate

    phone = calibrate.Calibrated("phone", Path("phone.toml"), "onnxruntime", "1.32.0", "0.1.0", "cpu", {})
    monkeypatch.setattr(calibrate, "is_device_file", lambda device: device == "phone.toml")
    monkeypatch.setattr(calibrate, "load_device_file", lambda _: phone)
    assert main(["profile", str(small[1]["fp32"]), "--device", "phone.toml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnxruntime kernel timings" in err and "iphone12pro" in err
