"""Integer rounding simulated in float: what the backends' int8 kernels do to weights and activations.

Mirrors the schemes edgerep exports: weights symmetric per output channel in [-q, q] (q = 127; 64 for ONNX
``reduce_range``, onnxruntime's symmetric 7-bit range), activations asymmetric per tensor in [-128, 127] over a
calibrated range.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weight_qmax(bits: int) -> int:
    """Largest weight integer: 127 for 8 bits; 7 bits is onnxruntime's ``reduce_range`` [-64, 64]."""
    return 64 if bits == 7 else 2 ** (bits - 1) - 1


def weight_scale(w: Tensor, bits: int = 8) -> Tensor:
    """Per-output-channel scale, shaped to broadcast against ``w``: max |w| / qmax, as every backend computes it."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (w.detach().abs().flatten(1).amax(1).clamp_min(1e-12) / weight_qmax(bits)).view(shape)


def weight(w: Tensor, bits: int = 8) -> Tensor:
    """``w`` rounded to symmetric per-output-channel ``bits``-bit integers and back."""
    q, scale = weight_qmax(bits), weight_scale(w, bits)
    return (w / scale).round().clamp(-q, q) * scale


def activation(x: Tensor, lo: float, hi: float) -> Tensor:
    """``x`` rounded to int8 over [lo, hi] (widened to contain 0, as every runtime does) and back."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255
    zero = round(-128 - lo / scale)
    return ((x / scale).round() + zero).clamp(-128, 127).sub(zero) * scale


def minmax_range(x: Tensor) -> tuple[float, float]:
    return x.min().item(), x.max().item()


def percentile_range(x: Tensor, percentile: float = 99.99) -> tuple[float, float]:
    """The range that keeps ``percentile`` % of |x| (onnxruntime's Percentile calibration, symmetric)."""
    flat = x.detach().flatten().float()
    if flat.numel() > 2_000_000:  # quantile refuses huge inputs; a strided sample estimates it well
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    bound = torch.quantile(flat.abs(), percentile / 100).item()
    return (max(x.min().item(), -bound), min(x.max().item(), bound))


def mse_range(x: Tensor, steps: int = 100) -> tuple[float, float]:
    """The clipping range (a shrink of min..max) with the least squared int8 rounding + clipping error."""
    lo, hi = minmax_range(x)
    flat = x.detach().flatten().float()
    if flat.numel() > 1_000_000:
        flat = flat[:: flat.numel() // 500_000 + 1]
    best, best_err = (lo, hi), float("inf")
    for i in range(steps, 0, -1):
        f = i / steps
        err = (activation(flat, lo * f, hi * f) - flat).pow(2).mean().item()
        if err < best_err:
            best, best_err = (lo * f, hi * f), err
    return best


RANGES = {"minmax": minmax_range, "percentile": percentile_range, "mse": mse_range}
