"""How edgerep measures that two models compute the same function."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ErrorStats:
    """``max_abs`` = max |out - ref|; ``rel`` = max_abs / max |ref| (robust to outputs near zero)."""

    max_abs: float
    rel: float


def output_error(ref: Tensor, out: Tensor) -> ErrorStats:
    """The error of ``out`` against ``ref``, measured in fp64 so the measurement adds no rounding of its own."""
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: {tuple(ref.shape)} vs {tuple(out.shape)}")
    ref64, out64 = ref.detach().double(), out.detach().double()
    max_abs = (ref64 - out64).abs().max().item() if ref.numel() else 0.0
    scale = ref64.abs().max().item() if ref.numel() else 0.0
    return ErrorStats(max_abs, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf")))


@torch.no_grad()
def randomize_bn(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters, so folding is non-trivial.

    Fresh BNs (mean 0, var 1, gamma 1, beta 0) hide most folding bugs; tests and the fusion sweep use this.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
            if m.weight is not None:
                m.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return module

