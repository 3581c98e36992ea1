"""RepVGG block (Ding et al., 2021): kxk+BN, 1x1+BN and an identity BN, summed, then activation.

Deploy form: one kxk conv with bias. Names follow timm (``conv_kxk``, ``conv_1x1``, ``identity``);
the original repository's ``rbr_dense`` / ``rbr_1x1`` / ``rbr_identity`` are mapped by
``edgerep.checkpoints``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..fuse import KernelBias, add_branches
from .base import ConvBN, FusedConv, ReparamBlock, deploy_conv, identity_branch


class RepVGGBlock(ReparamBlock):
    """``act(attn(BN(Wk * x) + BN(W1 * x) + BN(x)))``; the identity exists only for stride 1, in == out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: nn.Module | None = None,
        attn: nn.Module | None = None,
        use_identity: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"RepVGG needs an odd kernel size, got {kernel_size}")
        padding = kernel_size // 2 * dilation
        has_identity = use_identity and in_channels == out_channels and stride == 1
        self.identity = nn.BatchNorm2d(out_channels) if has_identity else None
        self.conv_kxk = ConvBN(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.conv_1x1 = ConvBN(in_channels, out_channels, 1, stride, 0, 1, groups)
        self.attn = attn
        self.act = act if act is not None else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_kxk(x) + self.conv_1x1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        if self.attn is not None:
            y = self.attn(y)
        return self.act(y)

    def get_kernel_bias(self) -> KernelBias:
        branches = [self.conv_kxk.get_kernel_bias(), self.conv_1x1.get_kernel_bias()]
        if self.identity is not None:
            branches.append(identity_branch(self.conv_kxk.conv, self.identity))
        return add_branches(branches)

    def fuse(self) -> FusedConv:
        return FusedConv(deploy_conv(self.get_kernel_bias(), self.conv_kxk.conv), self.attn, self.act)
