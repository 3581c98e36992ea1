"""Circular mask block (CMB): one shared kernel seen through circular masks of several radii.

No public code exists for CMB. This is edgerep's interpretation of the paper's description: the
branches share ONE kernel ``W``; branch ``r`` multiplies ``W`` by a fixed mask ``M_r`` that keeps the
taps whose centre lies within distance ``r`` of the kernel centre, and has its own BatchNorm; the
branches are summed. It adds no conv parameters (only one BN per radius); the inner taps are seen by
more branches, so they get more gradient than the corners (our reading of the motivation; compare
ACB's skeleton branches). Deploy form: one ``nn.Conv2d`` with ``W' = sum_r t_r (W * M_r)`` and
``b' = sum_r (beta_r - mu_r t_r)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fuse import KernelBias, add_branches, fold_bn
from .base import ReparamBlock, deploy_conv


def circular_mask(kernel_size: int, radius: float) -> Tensor:
    """1 where a tap's centre is within ``radius`` of the kernel centre (distance in taps), else 0."""
    c = kernel_size // 2
    offsets = torch.arange(kernel_size, dtype=torch.float64) - c
    dist2 = offsets.reshape(-1, 1) ** 2 + offsets.reshape(1, -1) ** 2
    return (dist2 <= radius * radius + 1e-9).to(torch.float32)


def default_radii(kernel_size: int) -> tuple[float, ...]:
    """Every integer radius up to the inscribed circle, then the whole square (the plain conv)."""
    half = kernel_size // 2
    return tuple(float(r) for r in range(1, half + 1)) + (half * math.sqrt(2.0),)


class CircularMaskBlock(ReparamBlock):
    """``sum_r BN_r((W * M_r) * x)``; any stride, padding, dilation and groups (the masks only touch W).

    ``radii`` defaults to ``default_radii(kernel_size)``: 1 and sqrt(2) for a 3x3 (the cross and the
    full kernel). ``conv`` only holds the shared kernel and the geometry; it is never called directly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int = 1,
        groups: int = 1,
        radii: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CMB needs an odd kernel size (a circle needs a centre tap), got {kernel_size}")
        radii = default_radii(kernel_size) if radii is None else tuple(float(r) for r in radii)
        if not radii or min(radii) < 0:
            raise ValueError(f"CMB needs at least one radius, all >= 0, got {radii}")
        padding = dilation * (kernel_size // 2) if padding is None else padding
        self.radii = radii
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False
        )
        masks = torch.stack([circular_mask(kernel_size, r) for r in radii])
        self.register_buffer("masks", masks.reshape(len(radii), 1, 1, kernel_size, kernel_size), persistent=False)
        self.bns = nn.ModuleList(nn.BatchNorm2d(out_channels) for _ in radii)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        y = None
        for mask, bn in zip(self.masks, self.bns):
            branch = bn(F.conv2d(x, c.weight * mask, None, c.stride, c.padding, c.dilation, c.groups))
            y = branch if y is None else y + branch
        return y

    def get_kernel_bias(self) -> KernelBias:
        return add_branches(fold_bn(self.conv.weight * mask, None, bn) for mask, bn in zip(self.masks, self.bns))

    def fuse(self) -> nn.Conv2d:
        return deploy_conv(self.get_kernel_bias(), self.conv)
