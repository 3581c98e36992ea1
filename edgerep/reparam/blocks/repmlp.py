"""RepMLP unit (RepMLPNet, Ding et al., 2022): a patch-wise FC, with conv branches folded into it.

The feature map is cut into ``h x w`` patches. The channels form sets of ``sharesets`` consecutive
channels, and channel ``c`` uses the weights of share-set ``c mod sharesets``. For each share-set, one
FC maps the ``h*w`` values of a patch to ``h*w`` values, followed by a BN per share-set. This FC sees
the whole patch but has no notion of locality. During training, parallel depthwise ``k x k`` conv + BN
branches on the same patches (zero-padded at each patch border, several ``k``) add that locality. On a
fixed ``h x w`` patch such a conv is a linear map of ``h*w`` values, that is, an FC. Feeding one-hot
images (an identity matrix) through it reads off that FC's columns, so the deploy form is ONE FC.

Variant implemented: RepMLPNet's ``RepMLPBlock``, with share-sets, FC + BN and depthwise conv branches.
Its global perceptron is optional: pool -> FC -> ReLU -> FC -> sigmoid, which multiplies the output per
channel. It cannot be folded, so the deploy form keeps it unchanged. Not implemented: the first RepMLP
paper's ResNet variant (global perceptron added to the partitions, channel FC), and RepMLPNet's
surrounding unit (pre-BN, FFN, residual), which is made of plain layers. Module names follow the original
repository (``fc3``, ``fc3_bn``, ``repconv{k}.conv/.bn``, ``gp.fc1/.fc2``) so its checkpoints load.

Partition order (``layout``): edgerep (``"edgerep"``, the default) follows the paper, every output value
goes back to the patch and channel it was computed for. The original code (``"original"``) reads its
patch rows in (patch row, patch column, channel group) order but writes them back as if they were in
(channel group, patch row, patch column) order (``partition_affine``'s ``reshape(-1, h_parts, w_parts, S,
h, w)``), so with more than one patch per image and ``channels / sharesets > 1`` its outputs are those
values permuted across patches and channel groups. ``layout="original"`` reproduces exactly that, in
train and deploy form, so an original checkpoint gives the original code's outputs at any input size.
Both layouts fuse the same way (the FC acts on one patch row); only the write-back differs.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fuse import KernelBias, add_branches, bn_scale_shift, conv_kernel_bias, scale_kernel
from .base import ConvBN, ReparamBlock, deploy_conv

__all__ = ["GlobalPerceptron", "PatchFC", "RepMLPBlock"]


class GlobalPerceptron(nn.Module):
    """Per-channel gates from the pooled image: the context a patch-wise FC cannot see."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class RepMLPBlock(ReparamBlock):
    """``gp(x) * unpatch(BN(FC(patches)) + sum_k BN_k(dwconv_k(patches)))``; deploy: ``PatchFC``.

    ``channels`` must be a multiple of ``sharesets``, and the input's H and W multiples of ``h`` and ``w``
    (checked in ``forward``: the patch size is fixed, the image size is not). ``kernel_sizes`` are the
    local branches' odd kernel sizes, and may exceed the patch. ``gp_reduction=None`` drops the global
    perceptron.
    """

    def __init__(
        self,
        channels: int,
        h: int,
        w: int,
        kernel_sizes: Iterable[int] = (1, 3),
        sharesets: int = 1,
        gp_reduction: int | None = 4,
        layout: str = "edgerep",
    ) -> None:
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"RepMLP layout must be 'edgerep' (the paper's partition order) or 'original' "
                             f"(the original code's), got {layout!r}")
        kernel_sizes = tuple(kernel_sizes)
        if h < 1 or w < 1:
            raise ValueError(f"patch size must be positive, got {h}x{w}")
        if sharesets < 1 or channels % sharesets:
            raise ValueError(f"channels ({channels}) must be a multiple of sharesets ({sharesets})")
        if any(k < 1 or k % 2 == 0 for k in kernel_sizes) or len(set(kernel_sizes)) != len(kernel_sizes):
            raise ValueError(f"kernel_sizes must be distinct odd positive sizes, got {kernel_sizes}")
        if gp_reduction is not None and not 1 <= gp_reduction <= channels:
            raise ValueError(f"gp_reduction must be in [1, {channels}] or None, got {gp_reduction}")
        self.channels, self.h, self.w, self.sharesets = channels, h, w, sharesets
        self.kernel_sizes = kernel_sizes
        self.layout = layout
        n = sharesets * h * w
        self.fc3 = nn.Conv2d(n, n, 1, groups=sharesets, bias=False)
        self.fc3_bn = nn.BatchNorm2d(sharesets)
        for k in kernel_sizes:
            self.add_module(f"repconv{k}", ConvBN(sharesets, sharesets, k, padding=k // 2, groups=sharesets))
        self.gp = GlobalPerceptron(channels, channels // gp_reduction) if gp_reduction is not None else None

    def _local_branches(self) -> list[ConvBN]:
        return [getattr(self, f"repconv{k}") for k in self.kernel_sizes]

    def forward(self, x: Tensor) -> Tensor:
        patches = _to_patches(x, self.h, self.w, self.sharesets)
        y = self.fc3_bn(self.fc3(patches.reshape(patches.shape[0], -1, 1, 1)).reshape_as(patches))
        for branch in self._local_branches():
            y = y + branch(patches)
        y = _LAYOUTS[self.layout](y, x.shape, self.h, self.w)
        return y if self.gp is None else y * self.gp(x)

    def get_kernel_bias(self) -> KernelBias:
        """The single FC as a grouped 1x1 conv: kernel ``(S*h*w, h*w, 1, 1)``, bias ``(S*h*w,)``.

        Output row ``s*h*w + p`` is position ``p`` (row-major in the patch) of share-set ``s``. Its input
        column ``q`` is position ``q`` of the same share-set (``groups = S``).
        """
        hw = self.h * self.w
        scale, shift = bn_scale_shift(self.fc3_bn)  # one BN channel per share-set, repeated over positions
        fc = scale_kernel(conv_kernel_bias(self.fc3), scale.repeat_interleave(hw))
        branches = [KernelBias(fc.kernel, fc.bias + shift.repeat_interleave(hw))]
        if self.kernel_sizes:
            local = add_branches(branch.get_kernel_bias() for branch in self._local_branches())
            branches.append(_conv_as_fc(local, self.h, self.w))
        return add_branches(branches)

    def fuse(self) -> PatchFC:
        return PatchFC(deploy_conv(self.get_kernel_bias(), self.fc3), self.h, self.w, self.gp, self.layout)


class PatchFC(nn.Module):
    """Deploy form of ``RepMLPBlock``: ``gp(x) * unpatch(fc3(patches))``, with no conv branches left."""

    def __init__(
        self, fc3: nn.Conv2d, h: int, w: int, gp: GlobalPerceptron | None = None, layout: str = "edgerep"
    ) -> None:
        super().__init__()
        self.fc3 = fc3
        self.h, self.w = h, w
        self.gp = gp
        self.layout = layout

    def forward(self, x: Tensor) -> Tensor:
        patches = _to_patches(x, self.h, self.w, self.fc3.groups)
        y = self.fc3(patches.reshape(patches.shape[0], -1, 1, 1)).reshape_as(patches)
        y = _LAYOUTS[self.layout](y, x.shape, self.h, self.w)
        return y if self.gp is None else y * self.gp(x)


def _to_patches(x: Tensor, h: int, w: int, sharesets: int) -> Tensor:
    """``(N, C, H, W)`` -> ``(N * H/h * W/w * C/S, S, h, w)``: each row holds one channel set of one patch."""
    n, c, height, width = x.shape
    if height % h or width % w:
        raise ValueError(f"input {height}x{width} is not a whole number of {h}x{w} patches")
    x = x.reshape(n, c, height // h, h, width // w, w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, sharesets, h, w)


def _from_patches(y: Tensor, shape: torch.Size, h: int, w: int) -> Tensor:
    """The inverse of ``_to_patches``."""
    n, c, height, width = shape
    y = y.reshape(n, height // h, width // w, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return y.reshape(n, c, height, width)


def _from_patches_original(y: Tensor, shape: torch.Size, h: int, w: int) -> Tensor:
    """The original code's write-back: rows read as (channel group, patch row, patch column), see the module doc."""
    n, c, height, width = shape
    s = y.shape[1]
    y = y.reshape(-1, height // h, width // w, s, h, w).permute(0, 3, 1, 4, 2, 5)
    return y.reshape(n, c, height, width)


_LAYOUTS = {"edgerep": _from_patches, "original": _from_patches_original}


def _conv_as_fc(kb: KernelBias, h: int, w: int) -> KernelBias:
    """A depthwise conv (``(S, 1, k, k)``, zero 'same' padding) on ``h x w`` patches as a grouped FC.

    Private fusion math (not yet in fuse.py): the conv's response to the one-hot image at position ``q``
    is column ``q`` of the FC.
    """
    s, _, kh, kw = kb.kernel.shape
    hw = h * w
    eye = torch.eye(hw, dtype=kb.kernel.dtype, device=kb.kernel.device).reshape(hw, 1, h, w).expand(hw, s, h, w)
    response = F.conv2d(eye, kb.kernel, padding=(kh // 2, kw // 2), groups=s)  # [q, s, p] = FC_s[p, q]
    kernel = response.reshape(hw, s * hw).t().reshape(s * hw, hw, 1, 1)
    return KernelBias(kernel, kb.bias.repeat_interleave(hw))
