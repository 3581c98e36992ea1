"""The fusion math of structural re-parameterization, written once.

Every block in ``edgerep.reparam.blocks`` reduces its branches to ``KernelBias`` pairs with these
functions and sums them; nothing else in edgerep knows how a kernel is folded. All functions are
pure tensor math (no module state is changed) and differentiable, so the same code serves
conversion and quantization-aware training. They hold in eval mode only: a BatchNorm folds with
its *running* statistics.

Conventions: a kernel has the PyTorch layout ``(out, in // groups, kh, kw)``; a bias is ``(out,)``.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "KernelBias",
    "bn_scale_shift",
    "bn_affine",
    "fold_bn",
    "identity_kernel",
    "pad_kernel",
    "add_branches",
    "merge_sequential",
    "avg_pool_kernel",
    "concat_branches",
    "scale_kernel",
    "conv_kernel_bias",
    "make_conv",
    "pair",
    "ConvGeometry",
]


class KernelBias(NamedTuple):
    """A branch reduced to one convolution: ``y = conv(x, kernel) + bias``."""

    kernel: Tensor
    bias: Tensor


def bn_scale_shift(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``y = x * scale + shift`` (per channel)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    return bn_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def bn_affine(
    mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm from its tensors (``F.batch_norm`` on buffers, an ATen ``batch_norm`` node)."""
    std = (var + eps).sqrt()
    gamma = weight if weight is not None else torch.ones_like(std)
    beta = bias if bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - mean * scale


def fold_bn(kernel: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> KernelBias:
    """Fold the BatchNorm that follows a conv into the conv: ``W' = W t``, ``b' = beta + (b - mu) t``."""
    scale, shift = bn_scale_shift(bn)
    if bias is None:
        bias = torch.zeros_like(shift)
    return KernelBias(kernel * scale.reshape(-1, 1, 1, 1), bias * scale + shift)


def identity_kernel(
    channels: int,
    groups: int = 1,
    kernel_size: int | tuple[int, int] = 1,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The kernel of ``y = x`` for a conv with ``groups`` groups.

    Output channel ``o`` reads input ``o`` which, inside its group, is column ``o mod (channels // groups)``:
    that column is what makes grouped and depthwise identities right. Odd kernel sizes only (the centre
    must exist); the conv that uses it needs stride 1 and "same" padding.
    """
    kh, kw = pair(kernel_size)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"identity kernel needs odd kernel sizes, got {kh}x{kw}")
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    kernel[idx, idx % per_group, kh // 2, kw // 2] = 1.0
    return kernel


def pad_kernel(kernel: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Zero-pad a kernel symmetrically to ``size`` (e.g. 1x1 -> 3x3, 1x3 -> 3x3, 5x5 -> 31x31).

    Valid only when both convs are centred on the same pixel, i.e. padding = (k // 2) * dilation for each,
    and share stride and dilation: the branch sum is then exact.
    """
    th, tw = pair(size)
    kh, kw = kernel.shape[-2:]
    dh, dw = th - kh, tw - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {th}x{tw}")
    if dh == 0 and dw == 0:
        return kernel
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def add_branches(branches: Iterable[KernelBias]) -> KernelBias:
    """Sum parallel branches, centring smaller kernels in the largest one."""
    branches = list(branches)
    if not branches:
        raise ValueError("no branches to add")
    shapes = {(tuple(b.kernel.shape[:2]), tuple(b.bias.shape)) for b in branches}
    if len(shapes) > 1:
        raise ValueError(f"branches disagree on (out, in/groups) kernel dims or bias shape: {sorted(shapes)}")
    kh = max(b.kernel.shape[-2] for b in branches)
    kw = max(b.kernel.shape[-1] for b in branches)
    kernel = sum(pad_kernel(b.kernel, (kh, kw)) for b in branches)
    bias = sum(b.bias for b in branches)
    return KernelBias(kernel, bias)


def merge_sequential(first: KernelBias, second: KernelBias, groups: int = 1) -> KernelBias:
    """One conv equal to a 1x1 conv (``first``) followed by any conv (``second``), both with ``groups``.

    Kernel: per group, ``conv2d(W2, W1.permute(1, 0, 2, 3))``; bias: ``b2 + sum(W2 * b1)``. Exact on the
    whole image only if the second conv's zero padding is replaced by ``first``'s bias (see
    ``edgerep.reparam.blocks.dbb.BNAndPad``): zero padding of the intermediate map is *not* the image of
    zero padding of the input.
    """
    w1, b1 = first
    w2, b2 = second
    if w1.shape[-2:] != (1, 1):
        raise ValueError(f"merge_sequential needs a 1x1 first conv, got {tuple(w1.shape[-2:])}")
    mid = w1.shape[0]
    if w2.shape[0] % groups or mid % groups:
        raise ValueError(f"groups ({groups}) must divide both convs' output channels ({mid}, {w2.shape[0]})")
    if w2.shape[1] * groups != mid:
        raise ValueError(f"channel mismatch: first gives {mid} channels, second takes {w2.shape[1]}x{groups}")
    if groups == 1:
        kernel = F.conv2d(w2, w1.permute(1, 0, 2, 3))
    else:
        out2 = w2.shape[0] // groups
        kernel = torch.cat(
            [
                F.conv2d(
                    w2[g * out2 : (g + 1) * out2],
                    w1[g * (mid // groups) : (g + 1) * (mid // groups)].permute(1, 0, 2, 3),
                )
                for g in range(groups)
            ]
        )
    bias_mid = b1.reshape(groups, 1, mid // groups, 1, 1)
    w2g = w2.reshape(groups, w2.shape[0] // groups, mid // groups, *w2.shape[-2:])
    bias = (w2g * bias_mid).sum(dim=(2, 3, 4)).reshape(-1) + b2
    return KernelBias(kernel, bias)


def avg_pool_kernel(
    channels: int,
    kernel_size: int,
    groups: int = 1,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """An average pool (``count_include_pad=True``) as a grouped conv kernel: 1/k^2 on the identity columns."""
    ident = identity_kernel(channels, groups, 1, dtype=dtype, device=device)
    return ident.expand(-1, -1, kernel_size, kernel_size) / float(kernel_size * kernel_size)


def concat_branches(branches: Iterable[KernelBias]) -> KernelBias:
    """Branches whose outputs are concatenated along channels: concatenate kernels along ``out``.

    With groups > 1 the result is a grouped conv only when each piece is one group's whole output
    block, in group order (as DBB builds it); pieces that each span all groups do not concatenate.
    """
    branches = list(branches)
    return KernelBias(torch.cat([b.kernel for b in branches]), torch.cat([b.bias for b in branches]))


def scale_kernel(kb: KernelBias, scale: Tensor) -> KernelBias:
    """A per-output-channel scale after the branch (``y * scale``)."""
    return KernelBias(kb.kernel * scale.reshape(-1, 1, 1, 1), kb.bias * scale)


def conv_kernel_bias(conv: nn.Conv2d) -> KernelBias:
    """A conv's own kernel and bias (a zero bias where it has none)."""
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    return KernelBias(conv.weight, bias)


class ConvGeometry(Protocol):
    """What ``make_conv`` copies from its template: an ``nn.Conv2d`` or a block that stores the same fields."""

    in_channels: int
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    padding_mode: str


def make_conv(kb: KernelBias, like: ConvGeometry, **override) -> nn.Conv2d:
    """The deploy conv: geometry (stride, padding, dilation, groups) of ``like``, weights from ``kb``.

    ``like`` is the branch that defines the block's geometry (its largest kernel); ``override`` replaces
    any of its settings (e.g. ``padding`` when that branch was padded to a larger kernel).
    """
    kernel, bias = kb
    args = dict(
        in_channels=like.in_channels,
        out_channels=kernel.shape[0],
        kernel_size=tuple(kernel.shape[-2:]),
        stride=like.stride,
        padding=like.padding,
        dilation=like.dilation,
        groups=like.groups,
        bias=True,
        padding_mode=like.padding_mode,
    )
    args.update(override)
    conv = nn.Conv2d(**args).to(device=kernel.device, dtype=kernel.dtype)
    with torch.no_grad():
        conv.weight.copy_(kernel.detach())
        conv.bias.copy_(bias.detach())
    return conv


def pair(v: int | tuple[int, int]) -> tuple[int, int]:
    """``3 -> (3, 3)``; a pair stays a pair (conv arguments come in both forms)."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
