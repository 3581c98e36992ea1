"""int8 simulated in PyTorch: the scheme every backend exports, fast enough to decide things by measurement.

Weights symmetric per output channel (``fakequant.weight``), each quantized layer's input int8 per tensor over
its calibrated range, and the network output int8 too when the last layer is quantized (every full-integer
backend quantizes the logits; with 1000 classes and small margins that rounding alone flips top-1).
``score`` compares the simulated model with the float one on images it was not calibrated on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..proof.numerics import closeness
from . import fakequant
from .graph import layer_order

SAMPLE_PER_BATCH = 20_000  # activation values kept per layer per batch to estimate ranges
OUTPUT = "<output>"  # key of the network output's range in a ranges dict


@dataclass(frozen=True)
class Score:
    """Simulated int8 vs float on held-out images: top-1 agreement and mean per-image cosine of the outputs."""

    agreement: float
    cosine: float

    def better_than(self, other: Score) -> bool:
        """Strictly better agreement, or equal agreement and a higher cosine."""
        return (self.agreement, self.cosine) > (other.agreement, other.cosine)

    def to_dict(self) -> dict:
        return {"agreement": round(self.agreement, 4), "cosine": round(self.cosine, 6)}


def logits(model: nn.Module, images: Tensor, batch: int = 64) -> Tensor:
    return torch.cat([model(images[i : i + batch].float()) for i in range(0, len(images), batch)]).flatten(1)


def input_ranges(model: nn.Module, names: list[str], images: Tensor, method: str = "minmax", batch: int = 64) -> dict:
    """Each layer's input range (and the output's, key ``OUTPUT``) over ``images`` by ``method``."""
    samples: dict[str, list[Tensor]] = {n: [] for n in [*names, OUTPUT]}
    mods = dict(model.named_modules())

    def keep(name: str, x: Tensor) -> None:
        flat = x.detach().flatten()
        step = max(1, flat.numel() // SAMPLE_PER_BATCH)
        samples[name].append(torch.cat([flat[::step], flat.min().view(1), flat.max().view(1)]))

    hooks = [mods[n].register_forward_pre_hook(lambda _m, i, n=n: keep(n, i[0])) for n in names]
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                keep(OUTPUT, model(images[i : i + batch].float()))
    finally:
        for h in hooks:
            h.remove()
    return {n: fakequant.RANGES[method](torch.cat(s)) for n, s in samples.items()}


@contextlib.contextmanager
def quantized(
    model: nn.Module, names: list[str], ranges: dict, bits: int = 8, last: str | None = None
) -> Iterator[None]:
    """Layers ``names`` with int8-rounded weights and inputs (and the output, if ``last`` is among them); restored on exit."""
    modules = dict(model.named_modules())
    saved, hooks = {}, []
    try:
        for n in names:
            m = modules[n]
            saved[n] = m.weight.data
            m.weight.data = fakequant.weight(m.weight.data, bits)
            lo, hi = ranges[n]
            hooks.append(m.register_forward_pre_hook(lambda _m, i, lo=lo, hi=hi: (fakequant.activation(i[0], lo, hi),)))
        if last is not None and last in names and OUTPUT in ranges:
            lo, hi = ranges[OUTPUT]
            hooks.append(model.register_forward_hook(lambda _m, _i, o, lo=lo, hi=hi: fakequant.activation(o, lo, hi)))
        yield
    finally:
        for h in hooks:
            h.remove()
        for n, w in saved.items():
            modules[n].weight.data = w


@torch.no_grad()
def score(
    model: nn.Module, calibration: Tensor, held_out: Tensor, *, skip: tuple[str, ...] = (), method: str = "minmax",
    bits: int = 8, reference: Tensor | None = None, ranges: dict | None = None,
) -> Score:
    """Simulated int8 of ``model`` (``skip`` layers float), calibrated on ``calibration``, judged on ``held_out``.

    ``reference`` is the float model's output on ``held_out`` (pass the *original* model's, so a transform that
    changed the float function is judged against what the user trained). ``ranges``: ``input_ranges`` of this
    model on ``calibration`` by ``method``, when the caller already has them (they do not depend on ``skip``).
    """
    model = model.eval()
    names = layer_order(model, held_out[:1].float())
    if ranges is None:
        ranges = input_ranges(model, names, calibration, method)
    ref = logits(model, held_out) if reference is None else reference.flatten(1)
    with quantized(model, [n for n in names if n not in skip], ranges, bits, last=names[-1] if names else None):
        out = logits(model, held_out)
    near = closeness(ref, out)
    return Score(near.top1, near.cosine)
