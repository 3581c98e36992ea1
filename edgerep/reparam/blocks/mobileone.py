"""MobileOne block (Vasu et al., 2023): N parallel kxk conv+BN branches, a 1x1 "scale" conv+BN and an
identity BN, summed, then optional attention and the activation.

Over-parameterizing with N kxk branches is what lets MobileOne-S0 train well without any extra cost
at inference: the deploy form is one kxk conv with bias. Names follow timm's ``MobileOneBlock``
(``conv_kxk.i``, ``conv_scale``, ``identity``; deploy ``reparam_conv``), so timm checkpoints of
either form load without renaming.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..fuse import KernelBias, add_branches
from .base import ConvBN, FusedConv, ReparamBlock, deploy_conv, identity_branch


class MobileOneBlock(ReparamBlock):
    """``act(attn(sum_i BN_i(W_i * x) + BN(W_1x1 * x) + BN(x)))``.

    The scale branch exists only for ``kernel_size > 1`` (for k = 1 it would duplicate a kxk branch);
    the identity only for stride 1 and ``in_channels == out_channels``. MobileOne stacks depthwise
    (``groups == channels``) kxk blocks and dense 1x1 blocks; any grouping works.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        num_branches: int = 1,
        act: nn.Module | None = None,
        attn: nn.Module | None = None,
        use_identity: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"MobileOne needs an odd kernel size, got {kernel_size}")
        if num_branches < 1:
            raise ValueError(f"MobileOne needs at least one kxk branch, got num_branches={num_branches}")
        padding = kernel_size // 2 * dilation
        has_identity = use_identity and in_channels == out_channels and stride == 1
        self.identity = nn.BatchNorm2d(out_channels) if has_identity else None
        self.conv_kxk = nn.ModuleList(
            ConvBN(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
            for _ in range(num_branches)
        )
        self.conv_scale = ConvBN(in_channels, out_channels, 1, stride, 0, 1, groups) if kernel_size > 1 else None
        self.attn = attn
        self.act = act if act is not None else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_kxk[0](x)
        for branch in self.conv_kxk[1:]:
            y = y + branch(x)
        if self.conv_scale is not None:
            y = y + self.conv_scale(x)
        if self.identity is not None:
            y = y + self.identity(x)
        if self.attn is not None:
            y = self.attn(y)
        return self.act(y)

    def get_kernel_bias(self) -> KernelBias:
        branches = [b.get_kernel_bias() for b in self.conv_kxk]
        if self.conv_scale is not None:
            branches.append(self.conv_scale.get_kernel_bias())
        if self.identity is not None:
            branches.append(identity_branch(self.conv_kxk[0].conv, self.identity))
        return add_branches(branches)

    def fuse(self) -> FusedConv:
        return FusedConv(deploy_conv(self.get_kernel_bias(), self.conv_kxk[0].conv), self.attn, self.act)
