"""Small PyTorch networks in the styles of well-known mobile architectures, for checking the latency predictors.

They are *not* calibration data: ``edgerep calibrate`` times single kernels, and these whole networks are what
its predictions are checked against (bench/predict_accuracy.py) and what the graph-cost tests export in every
format. Styles: MobileNetV3 (hard-swish, squeeze-excite), EfficientNet-lite (ReLU6, optionally TF-"same"
padding computed at run time, the export that hides shapes behind Shape -> Gather -> ... -> Pad), RegNet
(grouped 3x3 bottlenecks), GhostNet (primary conv + cheap depthwise, concatenated), ResNet (basic blocks).
Weights are random: latency does not depend on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class SameConv2d(nn.Conv2d):
    """A conv with TensorFlow "same" padding computed from the input size at run time (as TF ports write it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "hswish": nn.Hardswish(), "silu": nn.SiLU(),
            "gelu": nn.GELU(), "none": nn.Identity()}[name]


def conv_bn(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1, act: str = "relu",
            same: bool = False) -> nn.Sequential:
    conv = (SameConv2d(cin, cout, k, s, groups=groups, bias=False) if same else
            nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), _act(act))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int, gate: str = "hsigmoid") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid() if gate == "hsigmoid" else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(F.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, s: int, act: str = "relu6", se: int = 0,
                 same: bool = False, gate: str = "hsigmoid") -> None:
        super().__init__()
        layers: list[nn.Module] = [] if expand == cin else [conv_bn(cin, expand, act=act)]
        layers.append(conv_bn(expand, expand, k, s, groups=expand, act=act, same=same))
        if se:
            layers.append(SqueezeExcite(expand, se, gate))
        layers.append(conv_bn(expand, cout, act="none"))
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class GhostModule(nn.Module):
    def __init__(self, cin: int, cout: int, act: str = "relu") -> None:
        super().__init__()
        half = math.ceil(cout / 2)
        self.primary = conv_bn(cin, half, act=act)
        self.cheap = conv_bn(half, half, 3, groups=half, act=act)
        self.cout = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, : self.cout]


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int, s: int, se: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [GhostModule(cin, mid)]
        if s > 1:
            layers.append(conv_bn(mid, mid, k, s, groups=mid, act="none"))
        if se:
            layers.append(SqueezeExcite(mid, se))
        layers.append(GhostModule(mid, cout, act="none"))
        self.body = nn.Sequential(*layers)
        self.shortcut = (nn.Identity() if s == 1 and cin == cout else
                         nn.Sequential(conv_bn(cin, cin, k, s, groups=cin, act="none"), conv_bn(cin, cout, act="none")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class RegNetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, s: int, group_width: int, se: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(cin, cout), conv_bn(cout, cout, 3, s, groups=cout // group_width)]
        if se:
            layers.append(SqueezeExcite(cout, max(8, cin // 4), gate="sigmoid"))
        layers.append(conv_bn(cout, cout, act="none"))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if s == 1 and cin == cout else conv_bn(cin, cout, 1, s, act="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, s), conv_bn(cout, cout, 3, act="none"))
        self.shortcut = nn.Identity() if s == 1 and cin == cout else conv_bn(cin, cout, 1, s, act="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Net(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module, features: int,
                 classes: int = 1000) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks), head
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


def _ch(c: float, w: float) -> int:
    return max(8, int(c * w + 4) // 8 * 8)


def mobilenet_v3_style(width: float = 1.0, small: bool = False) -> Net:
    cfg = ((3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (5, 96, 40, True, "hswish", 2),
           (5, 240, 40, True, "hswish", 1), (5, 288, 96, True, "hswish", 2), (5, 576, 96, True, "hswish", 1)) \
        if small else \
          ((3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (5, 72, 40, True, "relu", 2),
           (5, 120, 40, True, "relu", 1), (3, 240, 80, False, "hswish", 2), (3, 184, 80, False, "hswish", 1),
           (3, 480, 112, True, "hswish", 1), (5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1))
    cin, blocks = 16, []
    for k, e, c, se, act, s in cfg:
        e, c = _ch(e, width), _ch(c, width)
        blocks.append(InvertedResidual(cin, c, e, k, s, act, _ch(e / 4, 1) if se else 0))
        cin = c
    head = _ch(cfg[-1][1], width)
    return Net(conv_bn(3, 16, 3, 2, act="hswish"), blocks, conv_bn(cin, head, act="hswish"), head)


def efficientnet_lite_style(width: float = 1.0, depth: float = 1.0, same: bool = False, se: bool = False) -> Net:
    cfg = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
           (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
    cin, blocks = 32, []
    for i, (k, s, e, c, n) in enumerate(cfg):
        c = _ch(c, width)
        for j in range(n if i in (0, len(cfg) - 1) else math.ceil(depth * n)):
            blocks.append(InvertedResidual(cin, c, cin * e, k, s if j == 0 else 1, "silu" if se else "relu6",
                                           max(8, cin // 4) if se else 0, same, gate="sigmoid"))
            cin = c
    return Net(conv_bn(3, 32, 3, 2, act="relu6", same=same), blocks, conv_bn(cin, 1280, act="relu6"), 1280)


def regnet_style(widths: tuple[int, ...] = (24, 56, 152, 368), depths: tuple[int, ...] = (1, 1, 4, 7),
                 group_width: int = 8, se: bool = False) -> Net:
    cin, blocks = 32, []
    for w, d in zip(widths, depths):
        for j in range(d):
            blocks.append(RegNetBlock(cin, w, 2 if j == 0 else 1, group_width, se))
            cin = w
    return Net(conv_bn(3, 32, 3, 2), blocks, nn.Identity(), cin)


def ghostnet_style(width: float = 1.0) -> Net:
    cfg = ((3, 16, 16, 0, 1), (3, 48, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 1, 2), (5, 120, 40, 1, 1),
           (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 480, 112, 1, 1), (5, 672, 160, 1, 2), (5, 960, 160, 0, 1))
    cin, blocks = _ch(16, width), []
    for k, mid, c, se, s in cfg:
        mid, c = _ch(mid, width), _ch(c, width)
        blocks.append(GhostBottleneck(cin, mid, c, k, s, _ch(mid / 4, 1) if se else 0))
        cin = c
    head = _ch(960, width)
    return Net(conv_bn(3, _ch(16, width), 3, 2), blocks, conv_bn(cin, head), head)


def resnet_style(widths: tuple[int, ...] = (64, 128, 256, 512), depths: tuple[int, ...] = (2, 2, 2, 2)) -> Net:
    cin, blocks = widths[0], []
    for i, (w, d) in enumerate(zip(widths, depths)):
        for j in range(d):
            blocks.append(BasicBlock(cin, w, 2 if j == 0 and i > 0 else 1))
            cin = w
    stem = nn.Sequential(conv_bn(3, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
    return Net(stem, blocks, nn.Identity(), cin)


TEST_NETS: dict[str, tuple[Callable[[], Net], int]] = {
    # name: (builder, input resolution)
    "mnv3_large_1.0_224": (lambda: mobilenet_v3_style(1.0), 224),
    "mnv3_large_0.75_160": (lambda: mobilenet_v3_style(0.75), 160),
    "mnv3_small_1.0_224": (lambda: mobilenet_v3_style(1.0, small=True), 224),
    "mnv3_small_0.5_128": (lambda: mobilenet_v3_style(0.5, small=True), 128),
    "effnet_lite0_224": (lambda: efficientnet_lite_style(1.0, 1.0), 224),
    "effnet_lite0_same_192": (lambda: efficientnet_lite_style(1.0, 1.0, same=True), 192),
    "effnet_lite1_same_240": (lambda: efficientnet_lite_style(1.0, 1.1, same=True), 240),
    "effnet_b0_se_160": (lambda: efficientnet_lite_style(1.0, 1.0, se=True), 160),
    "effnet_lite_0.5_128": (lambda: efficientnet_lite_style(0.5, 0.8), 128),
    "regnetx_200mf_224": (lambda: regnet_style(), 224),
    "regnety_200mf_160": (lambda: regnet_style(se=True), 160),
    "regnetx_400mf_192": (lambda: regnet_style((32, 64, 160, 384), (1, 2, 7, 12), 16), 192),
    "ghostnet_1.0_224": (lambda: ghostnet_style(1.0), 224),
    "ghostnet_0.5_160": (lambda: ghostnet_style(0.5), 160),
    "ghostnet_1.3_192": (lambda: ghostnet_style(1.3), 192),
    "resnet10_128": (lambda: resnet_style(depths=(1, 1, 1, 1)), 128),
    "resnet18_0.5_160": (lambda: resnet_style((32, 64, 128, 256)), 160),
    "resnet18_0.25_224": (lambda: resnet_style((16, 32, 64, 128)), 224),
    "resnet14_narrow_192": (lambda: resnet_style((24, 48, 96, 192), (1, 2, 2, 1)), 192),
    "mnv3_large_1.25_192": (lambda: mobilenet_v3_style(1.25), 192),
}


def build(name: str, seed: int = 0) -> tuple[Net, tuple[int, int, int]]:
    """The network ``name`` in eval mode with its (C, H, W) input size."""
    if name not in TEST_NETS:
        raise KeyError(f"unknown test net {name!r}; known: {', '.join(TEST_NETS)}")
    torch.manual_seed(seed)
    builder, res = TEST_NETS[name]
    return builder().eval(), (3, res, res)
