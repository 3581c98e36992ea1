"""apple/ml-mobileone's MobileOne as its published structure defines it (module names, shapes, forward order),
written here for the layout test: random weights in the original's key layout, and its outputs to match.

Names: ``stage0`` (stem block, one branch), ``stage1..4`` (pairs of depthwise kxk / pointwise 1x1 blocks, the
first depthwise of a stage with stride 2), ``rbr_conv.i.{conv,bn}``, ``rbr_scale``, ``rbr_skip``, ``se.reduce`` /
``se.expand`` (reduction 1/16, truncated), ``linear``. Widths: 64 * multiplier per stage, stem min(64, 64 * m0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = {"s0": ((0.75, 1.0, 1.0, 2.0), 4, False), "s4": ((3.0, 3.5, 3.5, 4.0), 1, True)}


def _conv_bn(cin, cout, k, stride, groups):
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


class OriginalSE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.reduce = nn.Conv2d(c, int(c * 0.0625), 1)
        self.expand = nn.Conv2d(int(c * 0.0625), c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.expand(F.relu(self.reduce(F.avg_pool2d(x, list(x.shape[-2:]))))))
        return x * s.view(-1, x.shape[1], 1, 1)


class OriginalBlock(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, branches=1, se=False):
        super().__init__()
        self.rbr_skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_conv = nn.ModuleList(_conv_bn(cin, cout, k, stride, groups) for _ in range(branches))
        self.rbr_scale = _conv_bn(cin, cout, 1, stride, groups) if k > 1 else None
        self.se = OriginalSE(cout) if se else nn.Identity()
        self.activation = nn.ReLU()

    def forward(self, x):
        out = (self.rbr_scale(x) if self.rbr_scale is not None else 0) + (
            self.rbr_skip(x) if self.rbr_skip is not None else 0)
        for branch in self.rbr_conv:
            out = out + branch(x)
        return self.activation(self.se(out))


class OriginalMobileOne(nn.Module):
    def __init__(self, variant="s0", num_classes=1000):
        super().__init__()
        mult, branches, use_se = VARIANTS[variant]
        planes = min(64, int(64 * mult[0]))
        self.stage0 = OriginalBlock(3, planes, 3, 2)
        depths, widths = (2, 8, 10, 1), (64, 128, 256, 512)
        n_se = (0, 0, 5 if use_se else 0, 1 if use_se else 0)
        for i in range(4):
            blocks, out = [], int(widths[i] * mult[i])
            for j in range(depths[i]):
                se = j >= depths[i] - n_se[i]
                blocks += [OriginalBlock(planes, planes, 3, 2 if j == 0 else 1, planes, branches, se),
                           OriginalBlock(planes, out, 1, 1, 1, branches, se)]
                planes = out
            setattr(self, f"stage{i + 1}", nn.Sequential(*blocks))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        for i in range(5):
            x = getattr(self, f"stage{i}")(x)
        return self.linear(self.gap(x).flatten(1))
