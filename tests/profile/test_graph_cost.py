"""Graph cost on files as users bring them: MACs equal PyTorch's count (within 1%) for ONNX exported with
TF-"same" pads computed at run time, a dynamic batch, QDQ and QOperator int8, and TFLite (NHWC); an op whose
shape cannot be known or whose type is unknown is named, never costed as a silent zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgerep.errors import BadInputError
from edgerep.profile.graph_cost import graph_cost
from edgerep.profile.style_nets import build, efficientnet_lite_style, mobilenet_v3_style
from edgerep.proof.metrics import count_macs

RES = 64  # small inputs keep the exports fast; the cost rules do not depend on the size


def _export(model: torch.nn.Module, path: Path, res: int = RES, dynamic: bool = True) -> Path:
    torch.onnx.export(model, torch.zeros(1, 3, res, res), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None)
    return path


def _close(a: int, b: int) -> bool:
    return abs(a - b) <= 0.01 * b


@pytest.fixture(scope="module")
def same_net():
    torch.manual_seed(0)
    return efficientnet_lite_style(0.5, 0.5, same=True).eval()


@pytest.fixture(scope="module")
def v3_net():
    torch.manual_seed(0)
    return mobilenet_v3_style(0.5, small=True).eval()


@pytest.fixture(scope="module")
def same_onnx(same_net, tmp_path_factory) -> Path:
    return _export(same_net, tmp_path_factory.mktemp("g") / "same.onnx")


@pytest.fixture(scope="module")
def v3_onnx(v3_net, tmp_path_factory) -> Path:
    return _export(v3_net, tmp_path_factory.mktemp("g") / "v3.onnx")


def test_same_padding_and_dynamic_batch_cost_every_conv(same_net, same_onnx):
    import onnx

    ops = {n.op_type for n in onnx.load(str(same_onnx)).graph.node}
    assert {"Shape", "Gather", "Pad"} <= ops  # the export really computes its pads at run time
    cost = graph_cost(same_onnx)
    assert _close(cost.macs, count_macs(same_net, (3, RES, RES)))
    assert cost.input_shape == (1, 3, RES, RES)
    assert not cost.partial
    pads = [lc for lc in cost.layers if lc.op == "Pad"]
    assert pads and all(lc.kind == "data" and lc.elements > 0 for lc in pads)
    # the pads hang off the symbolic batch: a runtime evaluates that arithmetic on every run, one op at a time
    shape_ops = [lc for lc in cost.layers if lc.op in ("Gather", "Shape")]
    assert shape_ops and all(lc.kind == "shape" and lc.macs == 0 for lc in shape_ops)


def test_shape_arithmetic_of_a_static_export_is_free(same_net, tmp_path):
    cost = graph_cost(_export(same_net, tmp_path / "static.onnx", dynamic=False))
    assert not [lc for lc in cost.layers if lc.kind == "shape"]
    assert any(lc.op == "Shape" and lc.kind == "free" for lc in cost.layers)


def test_mobilenet_v3_style_kernels(v3_net, v3_onnx):
    cost = graph_cost(v3_onnx)
    assert _close(cost.macs, count_macs(v3_net, (3, RES, RES)))
    kernels = {lc.kernel for lc in cost.costed}
    assert {"mul_broadcast", "pool:reduce", "pointwise", "depthwise5x5s2", "depthwise3x3s2"} <= kernels
    # onnxruntime's fp32 conv takes ReLU, hard-sigmoid and hard-swish after it and the residual add into it (its
    # optimized graph keeps none of them); the squeeze-excite multiply (per-channel gate) stays an op of its own
    fused = {lc.op for lc in cost.layers if lc.kind == "fused"}
    assert {"Relu", "HardSigmoid", "HardSwish", "Add"} <= fused
    assert not {"act:hardswish", "add"} & kernels


class _Convs(torch.nn.Module):
    """A dense 3x3, a grouped 3x3 (4 groups), a depthwise 3x3 stride 2 and a pointwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.pointwise = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(self.grouped(self.dense(x))))


def _positions(cost) -> dict[str, int]:
    return {lc.kernel: lc.positions for lc in cost.costed}


def test_conv_positions_are_pixels_times_groups(tmp_path):
    cost = graph_cost(_export(_Convs().eval(), tmp_path / "convs.onnx"))
    half = (RES // 2) ** 2
    assert _positions(cost) == {"conv3x3s1": RES * RES, "gconv3x3s1w4": RES * RES * 4, "depthwise3x3s2": half,
                                "pointwise": half}


def _calibration_reader(path: Path, n: int = 2):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.standard_normal((1, 3, RES, RES)).astype(np.float32)} for _ in range(n)])

        def get_next(self):
            return next(self.data, None)

    return Reader()


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_int8_files_cost_like_fp32(fmt, v3_net, v3_onnx, tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, out = tmp_path / "pre.onnx", tmp_path / f"v3_{fmt}.onnx"
    quant_pre_process(str(v3_onnx), str(pre), skip_symbolic_shape=True)  # onnxruntime's recommended recipe
    quantize_static(str(pre), str(out), _calibration_reader(v3_onnx),
                    quant_format=getattr(QuantFormat, fmt), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    cost = graph_cost(out)
    assert cost.precision == "int8"
    assert _close(cost.macs, count_macs(v3_net, (3, RES, RES)))
    assert not cost.partial, cost.uncosted
    if fmt == "QDQ":  # Q/DQ around convs vanish into int8 kernels; around hard-swish they are real work
        assert any(lc.kind == "fused" and lc.op == "DequantizeLinear" for lc in cost.layers)
        assert any(lc.kind == "requant" for lc in cost.layers)


def test_style_nets_all_cost_right(tmp_path):
    for name in ("regnety_200mf_160", "ghostnet_0.5_160", "resnet10_128"):
        net, shape = build(name)
        cost = graph_cost(_export(net, tmp_path / f"{name}.onnx", res=shape[1]))
        assert _close(cost.macs, count_macs(net, shape)), name
        assert not cost.partial


def test_unknown_shape_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    # a Reshape whose target shape is a graph input: no file-only reader can know what follows it
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 1, 1], np.ones(64, np.float32))
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Conv", ["r", "w"], ["y"], name="head")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, s], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "unknown.onnx")
    with pytest.raises(BadInputError, match="'head' \\(Conv\\)"):
        graph_cost(tmp_path / "unknown.onnx")


def test_symbolic_spatial_size_is_refused(tmp_path, v3_net):
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(v3_net, torch.zeros(1, 3, RES, RES), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    with pytest.raises(BadInputError, match="symbolic dimension 'h' at axis 2"):
        graph_cost(path)


def test_unknown_op_marks_the_result_partial(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Round", ["r"], ["y"], name="odd")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "odd.onnx")
    cost = graph_cost(tmp_path / "odd.onnx")
    assert cost.partial and cost.uncosted == ["odd (Round)"]
    assert cost.to_dict()["partial"] is True


@pytest.mark.slow
def test_litert_torch_tflite_nhwc_costs_like_torch(v3_net, tmp_path):
    litert_torch = pytest.importorskip("litert_torch")
    path = tmp_path / "v3.tflite"
    litert_torch.convert(v3_net, (torch.zeros(1, 3, RES, RES),)).export(str(path))
    cost = graph_cost(path)
    assert _close(cost.macs, count_macs(v3_net, (3, RES, RES)))
    assert not cost.partial, cost.uncosted
    assert "act:hardswish" in {lc.kernel for lc in cost.costed}
    convs = tmp_path / "convs.tflite"  # NHWC: positions from the middle axes, groups from the weight shape
    litert_torch.convert(_Convs().eval(), (torch.zeros(1, 3, RES, RES),)).export(str(convs))
    positions = _positions(graph_cost(convs))
    assert positions["gconv3x3s1w4"] == RES * RES * 4 and positions["depthwise3x3s2"] == (RES // 2) ** 2

