"""RepGhostNet 0.5x-2.0x in timm's layout (``conv_stem``, ``bn1``, ``blocks.i.j``, ``conv_head``, ``classifier``).

The same key layout as the original RepGhost repository. One table of bottlenecks, scaled by a
width multiplier, describes every variant; channels are rounded to multiples of 4 as timm does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..reparam.blocks.repghost import RepGhostModule
from .layers import SqueezeExcite, make_divisible
from .registry import register_model

__all__ = ["RepGhostNet", "RepGhostBottleneck", "ConvBnAct", "STAGES", "WIDTHS"]


class Bneck(NamedTuple):
    """One bottleneck: depthwise kernel, expansion (mid) channels, output channels, SE ratio, stride."""

    k: int
    exp: int
    c: int
    se: float
    s: int


# Stages as timm groups them (blocks.i); channels are for width 1.0.
STAGES: tuple[tuple[Bneck, ...], ...] = (
    (Bneck(3, 8, 16, 0, 1),),
    (Bneck(3, 24, 24, 0, 2),),
    (Bneck(3, 36, 24, 0, 1),),
    (Bneck(5, 36, 40, 0.25, 2),),
    (Bneck(5, 60, 40, 0.25, 1),),
    (Bneck(3, 120, 80, 0, 2),),
    (
        Bneck(3, 100, 80, 0, 1),
        Bneck(3, 120, 80, 0, 1),
        Bneck(3, 120, 80, 0, 1),
        Bneck(3, 240, 112, 0.25, 1),
        Bneck(3, 336, 112, 0.25, 1),
    ),
    (Bneck(5, 336, 160, 0.25, 2),),
    (
        Bneck(5, 480, 160, 0, 1),
        Bneck(5, 480, 160, 0.25, 1),
        Bneck(5, 480, 160, 0, 1),
        Bneck(5, 480, 160, 0.25, 1),
    ),
)

# Every width (after scaling by the multiplier) is rounded to a multiple of this, as timm does.
CHANNEL_DIVISOR = 4

WIDTHS = {
    "repghostnet_050": 0.5,
    "repghostnet_058": 0.58,
    "repghostnet_080": 0.8,
    "repghostnet_100": 1.0,
    "repghostnet_111": 1.11,
    "repghostnet_130": 1.3,
    "repghostnet_150": 1.5,
    "repghostnet_200": 2.0,
}


class ConvBnAct(nn.Module):
    """1x1 conv, BN, ReLU, named as timm's ``ConvBnAct`` (``conv``, ``bn1``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn1(self.conv(x)))


class RepGhostBottleneck(nn.Module):
    """Ghost expansion, [strided depthwise conv+BN], [SE], ghost projection, plus the shortcut.

    The shortcut is the identity when shapes allow, else depthwise kxk+BN then 1x1+BN (not
    re-parameterized: it is a sequence, not a sum of branches).
    """

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, dw_kernel: int = 3, stride: int = 1,
        se_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        pad = (dw_kernel - 1) // 2
        self.ghost1 = RepGhostModule(in_channels, mid_channels, relu=True)
        if stride > 1:
            self.conv_dw = nn.Conv2d(
                mid_channels, mid_channels, dw_kernel, stride, pad, groups=mid_channels, bias=False
            )
            self.bn_dw = nn.BatchNorm2d(mid_channels)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = SqueezeExcite(mid_channels, se_ratio) if se_ratio > 0 else None
        self.ghost2 = RepGhostModule(mid_channels, out_channels, relu=False)
        if in_channels == out_channels and stride == 1:
            self.shortcut = None
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, dw_kernel, stride, pad, groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.ghost1(x)
        if self.conv_dw is not None:
            y = self.bn_dw(self.conv_dw(y))
        if self.se is not None:
            y = self.se(y)
        y = self.ghost2(y)
        return y + (x if self.shortcut is None else self.shortcut(x))


class RepGhostNet(nn.Module):
    """3x3 stem, the bottleneck table scaled by ``width``, 1x1 ConvBnAct, then pool, 1x1 conv head, linear."""

    def __init__(
        self, width: float = 1.0, num_classes: int = 1000, in_chans: int = 3,
        stages: tuple[tuple[Bneck, ...], ...] = STAGES, head_channels: int = 1280,
    ) -> None:
        super().__init__()

        def scaled(channels: float) -> int:
            return make_divisible(channels * width, CHANNEL_DIVISOR)

        prev = scaled(16)
        self.conv_stem = nn.Conv2d(in_chans, prev, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(prev)
        self.act1 = nn.ReLU()
        blocks: list[nn.Module] = []
        for stage in stages:
            layers = []
            for b in stage:
                out, mid = scaled(b.c), scaled(b.exp)
                layers.append(RepGhostBottleneck(prev, mid, out, b.k, b.s, se_ratio=b.se))
                prev = out
            blocks.append(nn.Sequential(*layers))
        last = scaled(stages[-1][-1].exp * 2)
        blocks.append(nn.Sequential(ConvBnAct(prev, last)))
        self.blocks = nn.Sequential(*blocks)
        self.num_features = last
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(last, head_channels, 1)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(head_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.conv_head(self.global_pool(x)))
        return self.classifier(torch.flatten(x, 1))


def _create(name: str, num_classes: int, **kwargs) -> RepGhostNet:
    return RepGhostNet(WIDTHS[name], num_classes=num_classes, **kwargs)


@register_model("repghostnet")
def repghostnet_050(num_classes: int = 1000, **kwargs) -> RepGhostNet:
    return _create("repghostnet_050", num_classes, **kwargs)


@register_model("repghostnet")
def repghostnet_058(num_classes: int = 1000, **kwargs) -> RepGhostNet:
    return _create("repghostnet_058", num_classes, **kwargs)


@register_model("repghostnet")
def repghostnet_080(num_classes: int = 1000, **kwargs) -> RepGhostNet:
    return _create("repghostnet_080", num_classes, **kwargs)


@register_model("repghostnet")
def repghostnet_100(num_classes: int = 1000, **kwargs) -> RepGhostNet:
    return _create("repghostnet_100", num_classes, **kwargs)


@register_model("repghostnet")
def repghostnet_111(num_classes: int = 1000, **kwargs) -> RepGhostNet:
    return _create("repghostnet_111", num_classes, **kwargs)


@register_model("repghostnet")
def repghostnet_130(num_classes: int = 1000, **kwargs) -> RepGhostNet:
    return _create("repghostnet_130", num_classes, **kwargs)


@register_model("repghostnet")
def repghostnet_150(num_classes: int = 1000, **kwargs) -> RepGhostNet:
    return _create("repghostnet_150", num_classes, **kwargs)


@register_model("repghostnet")
def repghostnet_200(num_classes: int = 1000, **kwargs) -> RepGhostNet:
    return _create("repghostnet_200", num_classes, **kwargs)
