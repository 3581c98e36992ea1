"""MobileNetV2 (Sandler et al., 2018) in timm's EfficientNet-builder layout (``mobilenetv2_100``).

Keys: ``conv_stem``, ``bn1``, ``blocks.i.j.{conv_dw,bn1,conv_pw,bn2}`` for the first (no expansion)
block and ``blocks.i.j.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}`` for inverted residuals, then
``conv_head``, ``bn2``, ``classifier``. No re-param blocks: a plain baseline, and the base that the
MSGC variant modifies (its mask generator selects the inputs of ``InvertedResidual.conv_pwl``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from .registry import register_model

__all__ = ["MobileNetV2", "InvertedResidual", "DepthwiseSeparable", "Stage", "STAGES"]


class Stage(NamedTuple):
    """One row of the paper's table: expansion t, output channels c, repeats n, first stride s."""

    t: int
    c: int
    n: int
    s: int


STAGES: tuple[Stage, ...] = (
    Stage(1, 16, 1, 1),
    Stage(6, 24, 2, 2),
    Stage(6, 32, 3, 2),
    Stage(6, 64, 4, 2),
    Stage(6, 96, 3, 1),
    Stage(6, 160, 3, 2),
    Stage(6, 320, 1, 1),
)


class DepthwiseSeparable(nn.Module):
    """Depthwise kxk+BN+act, then a linear 1x1+BN; the t = 1 block (nothing to expand)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3,
        act_layer: Callable[[], nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_dw = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, kernel_size // 2, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = act_layer()
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    """Expand 1x1 (+BN+act), depthwise kxk (+BN+act), linear projection 1x1 (+BN), residual if shapes allow.

    The three steps are separate methods so a variant can change one (MSGC changes ``project``)
    and keep the others and the parameter names.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: int = 6, kernel_size: int = 3,
        act_layer: Callable[[], nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_pw = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = act_layer()
        self.conv_dw = nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = act_layer()
        self.conv_pwl = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def expand(self, x: Tensor) -> Tensor:
        return self.act1(self.bn1(self.conv_pw(x)))

    def depthwise(self, x: Tensor) -> Tensor:
        return self.act2(self.bn2(self.conv_dw(x)))

    def project(self, x: Tensor) -> Tensor:
        return self.bn3(self.conv_pwl(x))

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return y + x if self.has_skip else y


class MobileNetV2(nn.Module):
    """3x3 stride-2 stem, the stage table, 1x1 head conv to ``num_features``, pool, linear classifier."""

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, stages: tuple[Stage, ...] = STAGES,
        stem_channels: int = 32, num_features: int = 1280,
    ) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(in_chans, stem_channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.act1 = nn.ReLU6()
        prev = stem_channels
        blocks: list[nn.Module] = []
        for st in stages:
            layers: list[nn.Module] = []
            for i in range(st.n):
                stride = st.s if i == 0 else 1
                if st.t == 1:
                    layers.append(DepthwiseSeparable(prev, st.c, stride))
                else:
                    layers.append(InvertedResidual(prev, st.c, stride, st.t))
                prev = st.c
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(prev, num_features, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(num_features)
        self.act2 = nn.ReLU6()
        self.num_features = num_features
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        return self.act2(self.bn2(self.conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.global_pool(self.forward_features(x)), 1))


@register_model("mobilenetv2")
def mobilenetv2_100(num_classes: int = 1000, **kwargs) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, **kwargs)
