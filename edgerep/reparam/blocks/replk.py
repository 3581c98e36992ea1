"""Re-parameterized large kernel (RepLKNet, Ding et al., 2022): a large kxk conv+BN plus a small one.

A very large depthwise kernel (31, 29, 27, 13) trains poorly alone; the parallel small kernel (5x5)
restores locality during training and folds into the large kernel's centre afterwards. Deploy form:
one large ``nn.Conv2d`` with bias. Names follow the original (``lkb_origin``, ``small_conv``), so its
checkpoints load as they are.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..fuse import KernelBias, add_branches
from .base import ConvBN, ReparamBlock, deploy_conv


class ReparamLargeKernelConv(ReparamBlock):
    """``BN(W_large * x) + BN(W_small * x)``, both "same"-padded; depthwise unless ``groups`` is given.

    ``small_kernel=None`` is the original's variant without the small branch (no ``small_conv`` key): the
    block is then the large conv+BN alone, which still folds into one conv with bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 31,
        small_kernel: int | None = 5,
        stride: int = 1,
        dilation: int = 1,
        groups: int | None = None,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or (small_kernel is not None and (small_kernel % 2 == 0 or small_kernel < 1)):
            raise ValueError(
                f"RepLK needs odd kernel sizes to centre one in the other, got {kernel_size}/{small_kernel}"
            )
        if small_kernel is not None and small_kernel > kernel_size:
            raise ValueError(f"RepLK's small kernel ({small_kernel}) cannot exceed the large one ({kernel_size})")
        groups = in_channels if groups is None else groups
        self.lkb_origin = ConvBN(
            in_channels, out_channels, kernel_size, stride, dilation * (kernel_size // 2), dilation, groups
        )
        self.small_conv = None if small_kernel is None else ConvBN(
            in_channels, out_channels, small_kernel, stride, dilation * (small_kernel // 2), dilation, groups
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.lkb_origin(x)
        return out if self.small_conv is None else out + self.small_conv(x)

    def get_kernel_bias(self) -> KernelBias:
        branches = [self.lkb_origin] + ([self.small_conv] if self.small_conv is not None else [])
        return add_branches([b.get_kernel_bias() for b in branches])

    def fuse(self) -> nn.Conv2d:
        return deploy_conv(self.get_kernel_bias(), self.lkb_origin.conv)
