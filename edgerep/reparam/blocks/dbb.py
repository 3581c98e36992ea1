"""Diverse Branch Block (DBB, Ding et al., 2021): four branches of different shapes, summed.

Branches: kxk+BN; 1x1+BN; 1x1+BN -> kxk average pool -> BN; 1x1+BN -> kxk+BN. It replaces a plain
conv (no activation); the deploy form is one kxk ``nn.Conv2d`` with bias. The two sequential
branches are exact only because the map between their convs is padded with the value its BN gives
a zero input (``BNAndPad``), not with zeros. Names follow the original repository (``dbb_origin``,
``dbb_1x1``, ``dbb_avg``, ``dbb_1x1_kxk`` with ``idconv1``/``conv1``, ``bn1``, ``conv2``, ``bn2``), so
its checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fuse import (
    KernelBias,
    add_branches,
    avg_pool_kernel,
    bn_scale_shift,
    fold_bn,
    identity_kernel,
    merge_sequential,
)
from .base import ConvBN, FusedConv, ReparamBlock, deploy_conv, is_identity


class BNAndPad(nn.Module):
    """BatchNorm, then pad ``pad`` pixels on each side with the BN's output for a zero input.

    In the block's input coordinates the padded border is where a 1x1 conv would have read zero
    padding: a 1x1 conv maps zero to zero and the BN maps that to ``beta - mu * gamma / std``. Padding
    with that value makes "1x1 -> BN -> kxk" equal to one kxk conv over a zero-padded input; zero
    padding would not. The value uses the running statistics in training mode too (as the original
    does), so training sees the border the deploy conv will compute.
    """

    def __init__(self, num_features: int, pad: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(x)
        if self.pad == 0:
            return y
        _, shift = bn_scale_shift(self.bn)
        value = shift.reshape(1, -1, 1, 1)
        return F.pad(y - value, [self.pad] * 4) + value


class IdentityBasedConv1x1(nn.Module):
    """A 1x1 conv with kernel ``weight + I`` and ``weight`` zero at start: the 1x1 -> kxk branch starts as
    a plain kxk conv and learns how to mix channels before it (the paper's identity initialization)."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(channels, channels // groups, 1, 1))
        self.register_buffer("identity", identity_kernel(channels, groups), persistent=False)

    def kernel(self) -> Tensor:
        return self.weight + self.identity

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(), groups=self.groups)


class DilatedAvgPool2d(nn.Module):
    """Average pool over a dilated kxk window (zeros counted), which ``nn.AvgPool2d`` cannot express:
    a fixed depthwise conv with the average kernel, so DBB fuses exactly with dilation > 1."""

    def __init__(self, kernel_size: int, stride: int | tuple[int, int], padding: int, dilation: int) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        kernel = avg_pool_kernel(c, self.kernel_size, c, dtype=x.dtype, device=x.device)
        return F.conv2d(x, kernel, None, self.stride, self.padding, self.dilation, c)


class DiverseBranchBlock(ReparamBlock):
    """``BN(Wkxk * x) + BN(W1x1 * x) + BN(avg(BNpad(W1x1' * x))) + BN(Wkxk' * BNpad(W1x1'' * x))``.

    Padding must be "same" (``dilation * (k // 2)``) so that the 1x1 branches sit on the kxk centre.
    For a depthwise conv (``groups == in == out``) the 1x1 branch and the 1x1 before the average pool
    are omitted (a depthwise 1x1 is only a per-channel scale, which the BNs already have) and the
    1x1 -> kxk branch widens to ``2 * in`` internal channels, as in the original. When the internal
    width equals ``in_channels`` its 1x1 is identity-initialised (``IdentityBasedConv1x1``).
    ``nonlinear`` is the original's option: an activation after the sum, kept after the fused conv
    (``FusedConv(reparam_conv, act=nonlinear)``); without it the deploy form is the plain conv.
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
        internal_channels: int | None = None,
        nonlinear: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"DBB needs an odd kernel size (its 1x1 branches need a centre), got {kernel_size}")
        same = dilation * (kernel_size // 2)
        if padding is not None and padding not in (same, (same, same)):
            raise ValueError(
                f"DBB needs 'same' padding dilation * (k // 2) = {same} so its 1x1 branches align with the "
                f"kxk centre, got {padding}"
            )
        depthwise = groups == in_channels == out_channels
        if internal_channels is None:
            internal_channels = 2 * in_channels if depthwise else in_channels
        if internal_channels % groups:
            raise ValueError(f"DBB internal_channels ({internal_channels}) must be divisible by groups ({groups})")
        k = kernel_size
        self.groups = groups
        self.dbb_origin = ConvBN(in_channels, out_channels, k, stride, same, dilation, groups)
        self.dbb_1x1 = None if depthwise else ConvBN(in_channels, out_channels, 1, stride, 0, 1, groups)

        self.dbb_avg = nn.Sequential()
        if not depthwise:
            self.dbb_avg.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False))
            self.dbb_avg.add_module("bn", BNAndPad(out_channels, same))
        avg_pad = same if depthwise else 0
        if dilation == 1:
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, avg_pad))
        else:
            self.dbb_avg.add_module("avg", DilatedAvgPool2d(k, stride, avg_pad, dilation))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(out_channels))

        self.dbb_1x1_kxk = nn.Sequential()
        if internal_channels == in_channels:
            self.dbb_1x1_kxk.add_module("idconv1", IdentityBasedConv1x1(in_channels, groups))
        else:
            first = nn.Conv2d(in_channels, internal_channels, 1, groups=groups, bias=False)
            self.dbb_1x1_kxk.add_module("conv1", first)
        self.dbb_1x1_kxk.add_module("bn1", BNAndPad(internal_channels, same))
        second = nn.Conv2d(internal_channels, out_channels, k, stride, 0, dilation, groups, bias=False)
        self.dbb_1x1_kxk.add_module("conv2", second)
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(out_channels))
        self.nonlinear = None if is_identity(nonlinear) else nonlinear

    def forward(self, x: Tensor) -> Tensor:
        y = self.dbb_origin(x) + self.dbb_avg(x) + self.dbb_1x1_kxk(x)
        if self.dbb_1x1 is not None:
            y = y + self.dbb_1x1(x)
        return y if self.nonlinear is None else self.nonlinear(y)

    def get_kernel_bias(self) -> KernelBias:
        branches = [self.dbb_origin.get_kernel_bias(), self._avg_kernel_bias(), self._1x1_kxk_kernel_bias()]
        if self.dbb_1x1 is not None:
            branches.append(self.dbb_1x1.get_kernel_bias())
        return add_branches(branches)

    def fuse(self) -> nn.Module:
        conv = deploy_conv(self.get_kernel_bias(), self.dbb_origin.conv)
        return conv if self.nonlinear is None else FusedConv(conv, act=self.nonlinear)

    def _avg_kernel_bias(self) -> KernelBias:
        weight = self.dbb_origin.conv.weight
        k = self.dbb_origin.conv.kernel_size[0]
        avg = avg_pool_kernel(weight.shape[0], k, self.groups, dtype=weight.dtype, device=weight.device)
        pooled = fold_bn(avg, None, self.dbb_avg.avgbn)
        if not hasattr(self.dbb_avg, "conv"):
            return pooled
        first = fold_bn(self.dbb_avg.conv.weight, None, self.dbb_avg.bn.bn)
        return merge_sequential(first, pooled, self.groups)

    def _1x1_kxk_kernel_bias(self) -> KernelBias:
        seq = self.dbb_1x1_kxk
        w1 = seq.idconv1.kernel() if hasattr(seq, "idconv1") else seq.conv1.weight
        first = fold_bn(w1, None, seq.bn1.bn)
        second = fold_bn(seq.conv2.weight, None, seq.bn2)
        return merge_sequential(first, second, self.groups)
