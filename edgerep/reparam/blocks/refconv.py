"""Re-parameterized Refocusing Convolution (RefConv, Cai et al., 2023).

A frozen basis kernel ``W_b`` (taken from a pretrained conv) plus a trainable "refocusing" conv that
runs over the kernel itself: ``W = W_b + R(W_b)``. ``R`` sees the ``out * in / groups`` 2-D kernels as
channels of one ``k x k`` image and mixes them with a ``map_k x map_k`` conv in groups of ``groups``
kernels (the paper's ``G = in * out / groups^2``): a depthwise RefConv relates every channel's kernel
to all the others, a dense one refocuses each 2-D kernel on its own neighbourhood. Training changes
only ``R`` (and the bias / BN), which is what lets it build on the pretrained kernel.

The deploy form computes ``W`` once into a plain ``nn.Conv2d`` (and folds the optional BN); it never
runs ``R`` again. Names follow the original (``weight`` buffer, ``convmap``, ``bias``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fuse import KernelBias, fold_bn, pair
from .base import ReparamBlock, deploy_conv


class RefConv(ReparamBlock):
    """``BN(conv(x, W_b + R(W_b)) + bias)``; BN only with ``norm=True`` (else the block is a plain conv).

    ``basis`` is copied into the non-trainable buffer ``weight``; without it the buffer starts at zero
    and must come from a checkpoint (a zero basis gives a zero kernel). The block carries a conv's
    geometry attributes (``stride``, ``padding``, ...) so it reads like the conv it replaces.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = False,
        map_k: int = 3,
        basis: Tensor | None = None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must be divisible by groups ({groups})")
        if map_k % 2 == 0 or map_k > kernel_size:
            raise ValueError(
                f"RefConv's refocusing kernel map_k must be odd and <= kernel_size ({kernel_size}), got {map_k}"
            )
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        if basis is not None and tuple(basis.shape) != shape:
            raise ValueError(f"RefConv basis must have shape {shape}, got {tuple(basis.shape)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride, self.dilation, self.groups = pair(stride), pair(dilation), groups
        self.padding = pair(padding) if padding is not None else tuple(d * (kernel_size // 2) for d in self.dilation)
        self.padding_mode = "zeros"
        self.register_buffer("weight", torch.zeros(shape) if basis is None else basis.detach().clone())
        kernels = out_channels * in_channels // groups
        self.convmap = nn.Conv2d(kernels, kernels, map_k, 1, map_k // 2, groups=kernels // groups, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.bn = nn.BatchNorm2d(out_channels) if norm else None

    def kernel(self) -> Tensor:
        """``W_b + R(W_b)``: recomputed on every training step, computed once by ``fuse()``.

        ``R`` is ``convmap`` applied to the kernels as one image, written as an einsum over the
        ``map_k x map_k`` shifted views of the zero-padded kernels: the same numbers as
        ``convmap(W_b.reshape(1, -1, k, k))``, but a conv with ``out * in`` groups on a k x k image is
        very slow on CPU (minutes per ResNet-18 in fp64).
        """
        k, m, g = self.kernel_size[0], self.convmap.kernel_size[0], self.groups
        n = self.convmap.out_channels // g  # the refocusing conv's groups, each of g kernels
        padded = F.pad(self.weight.reshape(n, g, k, k), [m // 2] * 4)
        shifted = padded.unfold(2, k, 1).unfold(3, k, 1)  # (n, g, m, m, k, k), a view
        refocused = torch.einsum("noiab,niabyx->noyx", self.convmap.weight.reshape(n, g, g, m, m), shifted)
        return self.weight + refocused.reshape(self.weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.kernel(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.bn(y) if self.bn is not None else y

    def get_kernel_bias(self) -> KernelBias:
        kernel = self.kernel()
        bias = self.bias if self.bias is not None else kernel.new_zeros(self.out_channels)
        return fold_bn(kernel, bias, self.bn) if self.bn is not None else KernelBias(kernel, bias)

    def fuse(self) -> nn.Conv2d:
        # make_conv reads only the geometry attributes, which this block carries like a conv.
        return deploy_conv(self.get_kernel_bias(), self)
