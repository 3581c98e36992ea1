"""Asymmetric Convolution Block (ACNet, Ding et al., 2019): kxk+BN, kx1+BN and 1xk+BN, summed.

It replaces a plain conv (no activation): the kx1 and 1xk kernels strengthen the skeleton (centre
row and column) of the kxk kernel. Deploy form: one kxk ``nn.Conv2d`` with bias. Names follow the
original repository (``square_conv``/``square_bn``, ``ver_conv``/``ver_bn``, ``hor_conv``/``hor_bn``),
so its checkpoints load as they are.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..fuse import KernelBias, add_branches, fold_bn, pair
from .base import ReparamBlock, deploy_conv

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class ACBlock(ReparamBlock):
    """``BN(Wkxk * x) + BN(Wkx1 * x) + BN(W1xk * x)`` with one shared sampling grid.

    The kx1 branch must read the square kernel's rows and only its centre column (the 1xk branch the
    centre row). With ``padding < dilation * (k // 2)`` that column lies inside the image, so the
    kx1 branch's input is cropped by the difference on the left and right (as ACNet does); with a
    larger padding it is zero-padded by the difference. Any padding, stride, dilation and groups
    therefore fuse exactly. ``padding_mode`` (zeros, reflect, replicate, circular) is the original's option:
    every branch pads its rows / columns the same way as the square conv (the centre column of a kxk window
    on a reflect-padded input is a kx1 window on the same padding), so the fused conv keeps that mode.
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
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"ACB padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ACB needs an odd kernel size (its kx1/1xk branches need a centre), got {kernel_size}")
        reach = dilation * (kernel_size // 2)  # offset of the kernel centre from its first tap
        ph, pw = (reach, reach) if padding is None else pair(padding)
        if ph < 0 or pw < 0:
            raise ValueError(f"ACB padding must be >= 0, got {padding}")
        k = kernel_size
        conv = dict(stride=stride, dilation=dilation, groups=groups, bias=False, padding_mode=padding_mode)
        self.square_conv = nn.Conv2d(in_channels, out_channels, (k, k), padding=(ph, pw), **conv)
        self.square_bn = nn.BatchNorm2d(out_channels)
        # Columns the kx1 branch crops (padding too small) or pads (padding larger than "same").
        self.ver_crop = max(reach - pw, 0)
        self.ver_conv = nn.Conv2d(in_channels, out_channels, (k, 1), padding=(ph, max(pw - reach, 0)), **conv)
        self.ver_bn = nn.BatchNorm2d(out_channels)
        self.hor_crop = max(reach - ph, 0)
        self.hor_conv = nn.Conv2d(in_channels, out_channels, (1, k), padding=(max(ph - reach, 0), pw), **conv)
        self.hor_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        square = self.square_bn(self.square_conv(x))
        ver = self.ver_bn(self.ver_conv(x[..., self.ver_crop : w - self.ver_crop]))
        hor = self.hor_bn(self.hor_conv(x[..., self.hor_crop : h - self.hor_crop, :]))
        return square + ver + hor

    def get_kernel_bias(self) -> KernelBias:
        return add_branches(
            [
                fold_bn(self.square_conv.weight, None, self.square_bn),
                fold_bn(self.ver_conv.weight, None, self.ver_bn),
                fold_bn(self.hor_conv.weight, None, self.hor_bn),
            ]
        )

    def fuse(self) -> nn.Conv2d:
        return deploy_conv(self.get_kernel_bias(), self.square_conv)
