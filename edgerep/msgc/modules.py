"""The deploy-form modules of MobileNetV2-MSGC: BatchNorm folded, only ops every phone runtime has.

``DynamicMSGCBlock`` keeps the per-sample masks (pool, 1x1 convs, ``>=``, multiply, concat, grouped
conv). ``StaticMSGCBlock`` has masks fixed offline: its expand and depthwise convs compute only the
channels some head keeps, a constant-index gather hands each head its own channels, and the
projection is one grouped conv (heads of equal size), split convs (unequal sizes) or one dense conv
(every head keeps every computed channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DynamicMSGCBlock", "HeadsGate", "MSGCDeployNet", "StaticMSGCBlock"]


class HeadsGate(nn.Module):
    """Pooled block input -> 1x1 reduce (BN folded) -> ReLU -> 1x1 expand: the gate logits or attention."""

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d) -> None:
        super().__init__()
        self.reduce = reduce
        self.act = nn.ReLU()
        self.expand = expand

    def forward(self, pooled: Tensor) -> Tensor:
        return self.expand(self.act(self.reduce(pooled)))


class DynamicMSGCBlock(nn.Module):
    """An MSGC block in eval mode with its BNs folded: the same per-sample hard masks as the training form."""

    def __init__(
        self, expand: nn.Conv2d | None, dw: nn.Conv2d, project: nn.Conv2d, maskgen: HeadsGate,
        attgen: HeadsGate | None, heads: int, has_skip: bool,
    ) -> None:
        super().__init__()
        self.expand = expand
        self.dw = dw
        self.act = nn.ReLU6()
        self.maskgen = maskgen
        self.attgen = attgen
        self.project = project
        self.heads = heads
        self.has_skip = has_skip

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1)
        gate = (self.maskgen(pooled) >= 0).to(x.dtype)
        if self.attgen is not None:
            gate = gate * self.attgen(pooled)
        y = x if self.expand is None else self.act(self.expand(x))
        y = self.act(self.dw(y))
        y = self.project(torch.cat([y] * self.heads, 1) * gate)
        return y + x if self.has_skip else y


class StaticMSGCBlock(nn.Module):
    """An MSGC block whose masks were fixed offline; see the module docstring for the three projection shapes.

    ``select`` (no expand conv only): the input channels the depthwise conv still computes. ``gather``:
    for each head in turn, the positions of its channels among the computed ones (None for the dense
    case). ``project`` is an ``nn.Conv2d`` or, for heads of unequal size, an ``nn.ModuleList`` of one
    conv per head whose input sizes are ``splits``.
    """

    def __init__(
        self, expand: nn.Conv2d | None, dw: nn.Conv2d, project: nn.Conv2d | nn.ModuleList, *,
        select: Tensor | None, gather: Tensor | None, splits: list[int], attgen: HeadsGate | None, has_skip: bool,
    ) -> None:
        super().__init__()
        self.expand = expand
        self.dw = dw
        self.act = nn.ReLU6()
        self.attgen = attgen
        self.project = project
        self.splits = list(splits)
        self.has_skip = has_skip
        self.register_buffer("select", select)
        self.register_buffer("gather", gather)

    def forward(self, x: Tensor) -> Tensor:
        if self.expand is not None:
            y = self.act(self.expand(x))
        else:
            y = x if self.select is None else x.index_select(1, self.select)
        y = self.act(self.dw(y))
        if self.gather is not None:
            y = y.index_select(1, self.gather)
        if self.attgen is not None:
            y = y * self.attgen(F.adaptive_avg_pool2d(x, 1))
        if isinstance(self.project, nn.ModuleList):
            y = torch.cat([conv(part) for conv, part in zip(self.project, y.split(self.splits, 1))], 1)
        else:
            y = self.project(y)
        return y + x if self.has_skip else y


class MSGCDeployNet(nn.Module):
    """Stem conv, the deploy blocks, head conv (BNs folded, ReLU6 after each), global pool, classifier."""

    def __init__(self, stem: nn.Conv2d, blocks: nn.Sequential, head: nn.Conv2d, classifier: nn.Linear) -> None:
        super().__init__()
        self.stem = stem
        self.act1 = nn.ReLU6()
        self.blocks = blocks
        self.head = head
        self.act2 = nn.ReLU6()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.act2(self.head(self.blocks(self.act1(self.stem(x)))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
