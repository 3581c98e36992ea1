"""Give a plain CNN a re-param training form: swap its convs for ACB / DBB / CMB / RefConv blocks.

This is the inverse direction of ``reparameterize``: train the converted model, then
``reparameterize`` turns every block back into one plain conv, so the deploy model has exactly the
plain model's convs (each block replaces only its conv; the BN and activation after it stay).
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
from torch import Tensor, nn

from .blocks.acb import ACBlock
from .blocks.base import ReparamBlock
from .blocks.cmb import CircularMaskBlock
from .blocks.dbb import DiverseBranchBlock
from .blocks.refconv import RefConv

__all__ = ["BLOCKS", "convert_convs"]


Builder = Callable[..., ReparamBlock]  # (conv, geometry, copy_weights, **block_kwargs) -> block


def _with_main_kernel(cls: type[ReparamBlock], main_kernel: Callable[[ReparamBlock], Tensor]) -> Builder:
    """A builder for a block whose ``main_kernel`` (its kxk weight) may start as the conv's kernel."""

    def build(conv: nn.Conv2d, geometry: dict, copy_weights: bool, **kwargs) -> ReparamBlock:
        block = cls(**geometry, **kwargs)
        if copy_weights:
            main_kernel(block).copy_(conv.weight)
        return block

    return build


def _refconv(conv: nn.Conv2d, geometry: dict, copy_weights: bool, **kwargs) -> ReparamBlock:
    block = RefConv(**geometry, bias=conv.bias is not None, basis=conv.weight, **kwargs)
    if conv.bias is not None:
        block.bias.copy_(conv.bias)
    return block


# name -> (builder, copy_weights default). RefConv's basis IS the existing kernel, so it always copies.
BLOCKS: dict[str, tuple[Builder, bool]] = {
    "acb": (_with_main_kernel(ACBlock, lambda b: b.square_conv.weight), False),
    "dbb": (_with_main_kernel(DiverseBranchBlock, lambda b: b.dbb_origin.conv.weight), False),
    "cmb": (_with_main_kernel(CircularMaskBlock, lambda b: b.conv.weight), False),
    "refconv": (_refconv, True),
}


def convert_convs(
    model: nn.Module,
    block: str = "acb",
    *,
    min_kernel: int = 3,
    copy_weights: bool | None = None,
    inplace: bool = False,
    **block_kwargs,
) -> nn.Module:
    """Return ``model`` with every eligible ``nn.Conv2d`` replaced by a ``block`` of the same geometry.

    Eligible: a module whose type is exactly ``nn.Conv2d`` with a square, odd kernel >= ``min_kernel``
    and zero padding, outside any re-param block. Everything else is kept silently: smaller (1x1)
    kernels, even or non-square kernels, reflect/replicate/circular padding, ``nn.Conv2d`` subclasses
    (e.g. timm's ``Conv2dSame``, whose forward differs), and convs already inside a block, so
    converting twice changes nothing. An eligible conv the block cannot reproduce exactly (a
    non-square stride or dilation; DBB with padding other than "same") stays a plain conv and is
    named in one warning.

    ``copy_weights`` copies the existing kernel into the block's main kxk kernel (ACB, DBB) or the
    shared kernel (CMB); default off. RefConv always takes the existing kernel as its frozen basis and
    keeps the conv's bias (``copy_weights=False`` is refused). The other blocks drop a conv bias:
    their BatchNorms supply the shift. ``block_kwargs`` go to the block (e.g. ``radii`` for CMB,
    ``map_k`` for RefConv, ``internal_channels`` for DBB).
    """
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; choose one of {', '.join(BLOCKS)}")
    build, default_copy = BLOCKS[block]
    copy_weights = default_copy if copy_weights is None else copy_weights
    if block == "refconv" and not copy_weights:
        raise ValueError("RefConv's frozen basis is the existing conv's kernel: copy_weights=False is not possible")
    if not inplace:
        model = copy.deepcopy(model)
    refused: list[str] = []

    def swap(conv: nn.Conv2d, name: str) -> nn.Module:
        try:
            with torch.no_grad():
                new = build(conv, _geometry(conv), copy_weights, **block_kwargs)
        except ValueError as exc:
            refused.append(f"{name or '<model>'}: {exc}")
            return conv
        return new.to(device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)

    if _eligible(model, min_kernel):
        model = swap(model, "")
    elif not isinstance(model, ReparamBlock):
        _swap_children(model, "", min_kernel, swap)
    if refused:
        warnings.warn(f"{len(refused)} conv(s) kept as plain convs: " + "; ".join(refused), stacklevel=2)
    return model


def _swap_children(
    module: nn.Module, prefix: str, min_kernel: int, swap: Callable[[nn.Conv2d, str], nn.Module]
) -> None:
    for name, child in list(module.named_children()):
        path = prefix + name
        if isinstance(child, ReparamBlock):
            continue
        if _eligible(child, min_kernel):
            setattr(module, name, swap(child, path))
        else:
            _swap_children(child, path + ".", min_kernel, swap)


def _eligible(module: nn.Module, min_kernel: int) -> bool:
    if type(module) is not nn.Conv2d or module.padding_mode != "zeros":
        return False
    kh, kw = module.kernel_size
    return kh == kw and kh % 2 == 1 and kh >= min_kernel


def _geometry(conv: nn.Conv2d) -> dict:
    """The block constructor arguments equal to ``conv``'s geometry (string paddings made numeric)."""
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    if sh != sw or dh != dw:
        raise ValueError(f"non-square stride {conv.stride} or dilation {conv.dilation} is not supported")
    k = conv.kernel_size[0]
    padding = conv.padding
    if isinstance(padding, str):  # "valid" or "same" (odd kernels, so "same" is symmetric)
        padding = (0, 0) if padding == "valid" else (dh * (k // 2),) * 2
    return dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=k,
        stride=sh,
        padding=tuple(padding),
        dilation=dh,
        groups=conv.groups,
    )
