"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization"): exact in fp32, kinder to int8.

Fused re-param kernels sum several branches, so a few output channels end up with much larger weights
than the rest; a per-channel int8 weight scale copes, but the activation between two convs is quantized
per tensor and those channels waste its range. For ``conv1 -> ReLU -> conv2`` (ReLU(s x) = s ReLU(x) for
s > 0) dividing conv1's output channel i by s_i and multiplying conv2's input channel i by s_i computes
the same function; s_i = sqrt(r1_i / r2_i) gives both the same weight range sqrt(r1_i r2_i).
BatchNorms right after a conv are folded into it first (exact; every backend folds them anyway).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..reparam.fuse import fold_bn
from .graph import Chain, chains, conv_bn_pairs, set_module

MAX_SCALE = 1e3  # bound s_i (and 1/s_i): a near-empty channel must not blow up its partner's weights


@torch.no_grad()
def fold_batchnorms(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval) with each conv's BatchNorm folded into it and replaced by Identity."""
    model = copy.deepcopy(model).eval()
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        kernel, bias = fold_bn(conv.weight, conv.bias, bn)
        conv.weight.copy_(kernel)
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.detach().clone())
        else:
            conv.bias.copy_(bias)
        set_module(model, bn_name, nn.Identity())
    return model, len(pairs)


@torch.no_grad()
def equalize(model: nn.Module, iterations: int = 20, tol: float = 1e-4) -> tuple[nn.Module, int]:
    """A copy of ``model`` with its BatchNorms folded and every equalizable conv pair rescaled.

    Returns the model and the number of pairs. Pairs sharing a conv (chains) converge by repetition.
    """
    model, _ = fold_batchnorms(model)
    pairs = [c for c in chains(model) if c.bn is None]  # BNs were folded above
    for _ in range(iterations):
        change = max((_equalize_pair(model, c) for c in pairs), default=0.0)
        if change < tol:
            break
    return model, len(pairs)


def _equalize_pair(model: nn.Module, chain: Chain) -> float:
    """Rescale one pair in place; return max |log s| (how far it was from equalized)."""
    first: nn.Conv2d = model.get_submodule(chain.first)
    second: nn.Conv2d = model.get_submodule(chain.second)
    r1 = first.weight.abs().flatten(1).amax(1)
    r2 = input_channel_range(second)
    scale = torch.where((r1 > 0) & (r2 > 0), (r1 / r2.clamp_min(1e-30)).sqrt(), torch.ones_like(r1))
    scale = scale.clamp(1 / MAX_SCALE, MAX_SCALE)
    first.weight.div_(scale.view(-1, 1, 1, 1))
    if first.bias is not None:
        first.bias.div_(scale)
    second.weight.mul_(_per_input(second, scale))
    return scale.log().abs().max().item()


def input_channel_range(conv: nn.Conv2d) -> Tensor:
    """max |W| over everything that reads input channel i (any groups, depthwise included)."""
    g = conv.groups
    out, per_group = conv.weight.shape[:2]
    w = conv.weight.abs().amax((2, 3)).view(g, out // g, per_group)
    return w.amax(1).reshape(-1)


def _per_input(conv: nn.Conv2d, scale: Tensor) -> Tensor:
    """``scale`` (one per input channel) laid out to multiply ``conv.weight`` (out, in/groups, kh, kw)."""
    g = conv.groups
    out, per_group = conv.weight.shape[:2]
    s = scale.view(g, 1, per_group).expand(g, out // g, per_group).reshape(out, per_group)
    return s[:, :, None, None]
