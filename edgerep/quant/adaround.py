"""AdaRound (Nagel et al., 2020): choose each int8 weight's rounding direction to reconstruct the layer's output.

Rounding every weight to nearest minimises the weight error, not the output error; fused re-param kernels,
whose channels sum several branches, lose most there. Per conv / linear layer, in the order the model runs
them, a soft rounding ``floor(W/s) + h(V)`` (rectified sigmoid) is fitted so the layer fed the *quantized*
model's input (previous layers already rounded, input int8 as the backend quantizes it) reproduces the
*float* model's output, with a regulariser that drives every h to 0 or 1 (annealed). The result is stored as
float weights already on the int8 grid, per-channel max kept, so every backend's own quantizer (max |W| /
qmax per channel) computes the same scale and re-rounds to exactly the chosen integers: the four targets need
nothing format-specific. Cost is bounded on CPU: at most ``images`` inputs per layer, random spatial crops of
``crop`` pixels (a conv is local, and both sides see the same crop borders), ``iterations`` Adam steps.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from . import fakequant
from .graph import layer_order
from .simulate import input_ranges, quantized

ZETA, GAMMA = 1.1, -0.1  # rectified sigmoid stretch (the paper's values)
WARMUP = 0.2  # fraction of the iterations before the rounding regulariser starts


class _Captured(Exception):
    """Stops the forward pass once the wanted layer's input is captured (the rest is not needed)."""


def _capture(model: nn.Module, layer: nn.Module, images: Tensor, batch: int = 32) -> Tensor:
    """The input ``layer`` receives when ``model`` runs on ``images``."""
    parts: list[Tensor] = []

    def hook(_m, inputs):
        parts.append(inputs[0].detach())
        raise _Captured

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                try:
                    model(images[i : i + batch].float())
                except _Captured:
                    pass
    finally:
        handle.remove()
    return torch.cat(parts)


def _h(v: Tensor) -> Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def _crops(x_fp: Tensor, x_q: Tensor, size: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random batch of images and spatial windows from both inputs (whole vectors for linear layers)."""
    idx = torch.randint(0, len(x_fp), (n,), generator=gen)
    if x_fp.dim() != 4 or x_fp.shape[-1] <= size and x_fp.shape[-2] <= size:
        return x_fp[idx], x_q[idx]
    h, w = x_fp.shape[-2:]
    top = int(torch.randint(0, max(1, h - size + 1), (1,), generator=gen))
    left = int(torch.randint(0, max(1, w - size + 1), (1,), generator=gen))
    window = (slice(None), slice(None), slice(top, top + size), slice(left, left + size))
    return x_fp[idx][window], x_q[idx][window]


def _forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def _fit(layer: nn.Module, x_fp: Tensor, x_q: Tensor, *, bits: int, iterations: int, batch: int, crop: int,
         lam: float, gen: torch.Generator) -> Tensor:
    """The layer's weight on the int8 grid with AdaRound's rounding choice."""
    w = layer.weight.detach()
    scale = fakequant.weight_scale(w, bits)
    qmax = fakequant.weight_qmax(bits)
    ratio = w / scale
    floor = ratio.floor()
    rest = (ratio - floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)  # h(v) == rest at the start
    opt = torch.optim.Adam([v], lr=1e-2)
    warm = int(iterations * WARMUP)
    scale_reg = None  # the regulariser is weighed against the reconstruction error rounding to nearest leaves
    for step in range(iterations):
        xf, xq = _crops(x_fp, x_q, crop, batch, gen)
        with torch.no_grad():
            target = _forward(layer, xf, w)
        soft = (floor + _h(v)).clamp(-qmax, qmax) * scale
        out = _forward(layer, xq, soft)
        rec = (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
        loss = rec
        if scale_reg is None:  # soft weights start equal to the float ones (rec 0): weigh by nearest rounding's error
            with torch.no_grad():
                near = _forward(layer, xq, (ratio.round().clamp(-qmax, qmax)) * scale)
                scale_reg = ((near - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)).clamp_min(1e-12)
        if step >= warm:
            beta = 2 + 18 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, iterations - warm)))  # 20 -> 2
            loss = rec + lam * scale_reg * (1 - (2 * _h(v) - 1).abs().pow(beta)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = (floor + (_h(v) >= 0.5).float()).clamp(-qmax, qmax)
        # the per-channel max stays at +-qmax so a backend recomputing max |W| / qmax finds the same scale
        peak = ratio.abs().flatten(1).argmax(1)
        flat = q.flatten(1)
        flat[torch.arange(len(flat)), peak] = ratio.flatten(1)[torch.arange(len(flat)), peak].round()
        return flat.view_as(w) * scale


def adaround(
    model: nn.Module, images: Tensor, *, skip: tuple[str, ...] = (), bits: int = 8, iterations: int = 200,
    max_images: int = 64, batch: int = 16, crop: int = 24, lam: float = 10.0, method: str = "minmax", seed: int = 0,
) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose conv / linear weights (except ``skip``) sit on AdaRound's int8 grid; (model, layers).

    ``images`` are calibration images (the first ``max_images`` are used); ``method`` is how the input ranges
    the backend will calibrate are estimated (``fakequant.RANGES``).
    """
    float_model = model.eval()
    model = copy.deepcopy(model).eval()
    images = images[:max_images].float()
    names = [n for n in layer_order(model, images[:1]) if n not in skip]
    ranges = input_ranges(float_model, names, images, method)
    float_mods, mods = dict(float_model.named_modules()), dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    done: list[str] = []
    for name in names:
        x_fp = _capture(float_model, float_mods[name], images)
        with quantized(model, done, ranges, bits):  # rounded weights (already on the grid) and int8 inputs so far
            x_q = _capture(model, mods[name], images)
        x_q = fakequant.activation(x_q, *ranges[name])
        new = _fit(mods[name], x_fp, x_q, bits=bits, iterations=iterations, batch=batch, crop=crop, lam=lam, gen=gen)
        mods[name].weight.data.copy_(new)
        done.append(name)
    return model, len(done)
