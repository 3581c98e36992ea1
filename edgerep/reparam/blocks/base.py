"""The interface every re-param block shares, and the small layers blocks are built from.

A block is a *training form* (``nn.Module`` with parallel branches) that in eval mode equals one
convolution followed by the block's post-ops. It exposes:

- ``get_kernel_bias()``: the equivalent kernel and bias, differentiable (for QAT and for the proof);
- ``fuse()``: a new deploy module computing the same function (the block itself is left untouched).

``edgerep.reparam.convert.reparameterize`` swaps every block for ``block.fuse()``. A deploy module
is never a ``ReparamBlock``, so converting twice is a no-op.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..fuse import ConvGeometry, KernelBias, fold_bn, identity_kernel, make_conv


class ReparamBlock(nn.Module):
    """Base class of training-form blocks; see the module docstring for the contract."""

    def get_kernel_bias(self) -> KernelBias:
        """The kernel and bias of the single conv this block equals in eval mode."""
        raise NotImplementedError

    def fuse(self) -> nn.Module:
        """A new deploy-form module computing the same function as this block in eval mode."""
        raise NotImplementedError


class ConvBN(nn.Sequential):
    """Conv (no bias) then BatchNorm: the branch most blocks are made of.

    Named ``conv`` / ``bn`` like timm's ``ConvNormAct`` and the original repos' ``conv_bn``, so their
    checkpoints load without renaming.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def get_kernel_bias(self) -> KernelBias:
        return fold_bn(self.conv.weight, self.conv.bias, self.bn)


class FusedConv(nn.Module):
    """Deploy form of a block that ends in post-ops: ``act(attn(reparam_conv(x)))``.

    Named like timm's deployed blocks (``reparam_conv``), so timm deploy checkpoints load as is.
    Absent post-ops are ``None`` rather than ``nn.Identity`` so the traced graph has only real ops.
    """

    def __init__(self, reparam_conv: nn.Conv2d, attn: nn.Module | None = None, act: nn.Module | None = None):
        super().__init__()
        self.reparam_conv = reparam_conv
        self.attn = attn
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.reparam_conv(x)
        if self.attn is not None:
            x = self.attn(x)
        if self.act is not None:
            x = self.act(x)
        return x


def deploy_conv(kb: KernelBias, like: ConvGeometry, **override) -> nn.Conv2d:
    """``make_conv`` with the kernel detached from the training graph (deploy weights are leaves)."""
    return make_conv(KernelBias(kb.kernel.detach(), kb.bias.detach()), like, **override)


def identity_branch(like: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> KernelBias:
    """A block's identity shortcut, ``bn(x)`` (or ``x`` when ``bn`` is None), as a 1x1 kernel and bias.

    The kernel takes ``like``'s group layout, dtype and device, so it adds to the block's other branches
    after ``.double()`` or ``.to(device)``; ``add_branches`` centres it in the larger kernels. Only blocks
    whose identity exists (stride 1, in == out channels) may ask for it.
    """
    w = like.weight
    kernel = identity_kernel(like.out_channels, like.groups, dtype=w.dtype, device=w.device)
    if bn is None:
        return KernelBias(kernel, w.new_zeros(like.out_channels))
    return fold_bn(kernel, None, bn)


def is_identity(module: nn.Module | None) -> bool:
    """True for a post-op that does nothing, so a deploy form can drop it instead of keeping a no-op module."""
    return module is None or isinstance(module, nn.Identity)
