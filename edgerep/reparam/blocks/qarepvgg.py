"""QARepVGG block (Chu et al., 2022, "Make RepVGG Greater Again: A Quantization-aware Approach").

RepVGG quantizes badly because each branch has its own BatchNorm: the fused kernel mixes weights of
very different scales and the summed output has a large variance. QARepVGG keeps the BN only on the
kxk branch, adds the 1x1 conv and the identity *without* BN, and normalizes the sum with one BN:
``act(BN(BN_k(Wk * x) + W1 * x + x))``. Deploy form: one kxk conv with bias, like RepVGG.

Names follow the timm / RepVGG convention (``conv_kxk``, ``conv_1x1``, ``bn``) so the YOLOv6-style
``rbr_dense`` / ``rbr_1x1`` / ``bn`` checkpoints map with the same rules as RepVGG's.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..fuse import KernelBias, add_branches, conv_kernel_bias, fold_bn
from .base import ConvBN, FusedConv, ReparamBlock, deploy_conv, identity_branch


class QARepVGGBlock(ReparamBlock):
    """``act(bn(conv_kxk(x) + conv_1x1(x) + x))``; the identity exists only for stride 1, in == out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: nn.Module | None = None,
        use_identity: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"QARepVGG needs an odd kernel size, got {kernel_size}")
        padding = kernel_size // 2 * dilation
        # A bool, not a module: the BN-free identity has no parameters to name.
        self.has_identity = use_identity and in_channels == out_channels and stride == 1
        self.conv_kxk = ConvBN(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, 1, groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act if act is not None else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_kxk(x) + self.conv_1x1(x)
        if self.has_identity:
            y = y + x
        return self.act(self.bn(y))

    def get_kernel_bias(self) -> KernelBias:
        branches = [self.conv_kxk.get_kernel_bias(), conv_kernel_bias(self.conv_1x1)]
        if self.has_identity:
            branches.append(identity_branch(self.conv_1x1))
        kernel, bias = add_branches(branches)
        return fold_bn(kernel, bias, self.bn)

    def fuse(self) -> FusedConv:
        return FusedConv(deploy_conv(self.get_kernel_bias(), self.conv_kxk.conv), act=self.act)
