"""How edgerep measures that two models compute the same function."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


@torch.no_grad()
def measure_bn_statistics(module: nn.Module, images: Tensor, batch: int = 16) -> nn.Module:
    """Set every BatchNorm's running mean / var to the cumulative statistics of ``images``; returns it in eval mode.

    Random weights with random statistics give a nearly input-independent output; statistics measured on real photos
    make every layer see normalized activations, as in a trained network, which is what makes re-param nets hard
    to quantize.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    module.eval()
    for bn in bns:
        bn.train()
    for start in range(0, len(images), batch):
        module(images[start : start + batch])
    return module.eval()


@dataclass(frozen=True)
class Closeness:
    """How close ``out`` is to ``ref`` as a classifier, per input row: the one measure every comparison uses.

    ``top1`` = share of rows with the same argmax; ``cosine`` / ``cosine_min`` = mean / worst per-row cosine of the
    logits; ``kl`` = mean KL(softmax(ref) || softmax(out)) in nats.
    """

    top1: float
    cosine: float
    cosine_min: float
    kl: float


def closeness(ref: Tensor | np.ndarray, out: Tensor | np.ndarray) -> Closeness:
    """Compare two (N, ...) outputs row by row, in fp64 (rows are flattened: any classifier head shape works)."""
    r, o = torch.as_tensor(ref).detach().double(), torch.as_tensor(out).detach().double()
    r, o = r.reshape(len(r), -1), o.reshape(len(r), -1)
    cos = torch.nn.functional.cosine_similarity(r, o, dim=1)
    log_r, log_o = torch.log_softmax(r, dim=1), torch.log_softmax(o, dim=1)
    kl = (log_r.exp() * (log_r - log_o)).sum(1).mean().item()
    top1 = (r.argmax(1) == o.argmax(1)).double().mean().item()
    return Closeness(top1, cos.mean().item(), cos.min().item(), max(kl, 0.0))  # rounding can make 0 KL negative


def top1_accuracy(logits: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Share of rows whose argmax is the label."""
    pred = np.asarray(logits).reshape(len(logits), -1).argmax(1)
    return float((pred == np.asarray(labels)).mean())


def top1_change(ref: Tensor | np.ndarray, out: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> tuple[float, float]:
    """Top-1 of ``out`` minus top-1 of ``ref`` on the same labelled rows, and its standard error.

    Paired per image (each image's correct-or-not changes by -1, 0 or +1), so the error reflects only the images
    whose prediction changed: with 4% of 4,800 predictions changed it is about 0.25 points, the size of the
    differences int8 variants are compared on.
    """
    labels = torch.as_tensor(labels)
    d = _hits(out, labels) - _hits(ref, labels)
    return d.mean().item(), (d.std() / len(d) ** 0.5).item() if len(d) > 1 else float("nan")


def _hits(logits: Tensor | np.ndarray, labels: Tensor) -> Tensor:
    return (torch.as_tensor(np.asarray(logits)).reshape(len(labels), -1).argmax(1) == labels).double()
