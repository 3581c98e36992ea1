"""Empirical bias correction (Nagel et al., 2019): remove the mean shift int8 weight rounding causes.

Rounding a kernel W to Wq changes each output channel's mean by E[(W - Wq) x]: small per layer, but
systematic, so it adds up through a deep plain net and shifts the logits (worst for depthwise convs,
whose 9 weights per channel round coarsely). Measured on calibration images with float inputs, the shift
goes into the conv's bias; the backend then rounds W exactly as simulated here and the mean is restored.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fakequant


@torch.no_grad()
def correct_bias(
    model: nn.Module, images: Tensor, *, bits: int = 8, skip: tuple[str, ...] = (), batch: int = 64
) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose conv / linear biases absorb E[(W - Wq) x] over ``images``; (model, layers)."""
    model = copy.deepcopy(model).eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in skip}
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        delta = module.weight - fakequant.weight(module.weight, bits)
        shift = _apply(module, inputs[0], delta)  # (N, C, ...) output error caused by rounding alone
        dims = [0] + list(range(2, shift.dim()))
        sums[name] = sums.get(name, 0) + shift.sum(dims)
        counts[name] = counts.get(name, 0) + shift.numel() // shift.shape[1]

    handles = [m.register_forward_pre_hook(lambda m, i, n=n: hook(n, m, i)) for n, m in layers.items()]
    try:
        for start in range(0, len(images), batch):
            model(images[start : start + batch].float())
    finally:
        for h in handles:
            h.remove()
    for name, shift in sums.items():
        m = layers[name]
        mean = shift / counts[name]
        if m.bias is None:
            m.bias = nn.Parameter(mean.clone())
        else:
            m.bias.add_(mean)
    return model, len(sums)


def _apply(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    return module._conv_forward(x, weight, None)
