"""onnxruntime's fp32 blocked layout as ``ort_layout`` emulates it: the convs it runs blocked and the reorders it
inserts must be the ones in onnxruntime's own optimized graph (checked on this host's onnxruntime when it has the
layout), and the emulation must leave MACs, int8 graphs and other runtimes alone."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from edgerep.profile.graph_cost import graph_cost
from edgerep.profile.ort_layout import nchwc_layout, probe_block
from edgerep.profile.style_nets import build

ort = pytest.importorskip("onnxruntime")


def _export(model: torch.nn.Module, shape: tuple[int, int, int], path: Path) -> Path:
    torch.onnx.export(model, torch.zeros(1, *shape), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    return path


def _onnxruntime_graph(path: Path, tmp: Path) -> collections.Counter:
    """Op counts of onnxruntime's optimized graph (reorders, and blocked convs as ``nchwc:Conv``)."""
    import onnx

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp / f"{path.stem}.opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    nodes = onnx.load(opts.optimized_model_filepath).graph.node
    return collections.Counter(("nchwc:" if "nchwc" in n.domain else "") + n.op_type for n in nodes)


class _Mixed(torch.nn.Module):
    """Aligned and unaligned widths, a residual add into a blocked conv, a narrow-group conv, squeeze-excite, a
    max pool."""

    def __init__(self) -> None:
        super().__init__()
        c = torch.nn.Conv2d
        self.stem, self.dw = c(3, 32, 3, 2, 1), c(32, 32, 3, 1, 1, groups=32)
        self.pw, self.narrow, self.back = c(32, 32, 1), c(32, 24, 1), c(24, 32, 1)
        self.dw24 = c(24, 24, 5, 1, 2, groups=24)
        self.se1, self.se2 = c(32, 8, 1), c(8, 32, 1)
        self.grouped = c(32, 32, 3, 1, 1, groups=4)  # 8 channels per group: outside a 16-channel block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.grouped(x + self.pw(torch.relu(self.dw(x))))
        y = self.back(torch.relu(self.dw24(self.narrow(x))))
        g = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        return torch.nn.functional.max_pool2d(x * g + y, 3, 2, 1)


@pytest.fixture(scope="module")
def block() -> int:
    b = probe_block()
    if b < 2:
        pytest.skip("this onnxruntime has no blocked (NCHWc) layout")
    return b


@pytest.mark.parametrize("name", ["mixed", "mnv3_small_0.5_128", "ghostnet_0.5_160", "effnet_lite0_same_192"])
def test_blocked_convs_and_reorders_match_onnxruntime(name, block, tmp_path):
    torch.manual_seed(0)
    net, shape = (_Mixed().eval(), (3, 64, 64)) if name == "mixed" else build(name)
    path = _export(net, shape, tmp_path / f"{name}.onnx")
    got = nchwc_layout(graph_cost(path), block)
    ops = _onnxruntime_graph(path, tmp_path)
    emulated = collections.Counter(lc.op for lc in got.layers if lc.kernel == "reorder")
    assert emulated["ReorderInput"] == ops["nchwc:ReorderInput"], (ops, emulated)
    assert emulated["ReorderOutput"] == ops["nchwc:ReorderOutput"], (ops, emulated)
    blocked = sum(lc.op == "Conv" and lc.groups > 0 and not lc.kernel.endswith("_nchw") for lc in got.layers)
    assert blocked == ops["nchwc:Conv"] - ops.get("BatchNormalization", 0)


def test_layout_keeps_macs_and_leaves_other_graphs_alone(tmp_path):
    torch.manual_seed(0)
    path = _export(_Mixed().eval(), (3, 64, 64), tmp_path / "mixed.onnx")
    cost = graph_cost(path)
    laid = nchwc_layout(cost, 16)
    assert laid.macs == cost.macs
    narrow = [lc for lc in laid.layers if lc.op == "Conv" and lc.out_shape[1] == 24]
    assert narrow and narrow[0].work == narrow[0].macs * 32 // 24  # 24 output channels computed as 32
    dw24 = [lc for lc in laid.layers if lc.op == "Conv" and lc.groups == 24]
    assert dw24[0].work == dw24[0].macs * 32 // 24 and dw24[0].kernel == "depthwise5x5s1"
    assert {lc.kernel for lc in laid.layers if lc.op == "Conv" and lc.groups == 4} == {"gconv3x3s1w8_nchw"}
    assert nchwc_layout(cost, 0) is cost
    cost.precision = "int8"
    assert nchwc_layout(cost, 16) is cost
