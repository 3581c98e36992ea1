"""Branch algebra: a tensor as one convolution of its branch source, composed op by op.

A ``Form`` says ``y = conv2d(x, kernel, bias, stride, dilation)`` where ``x`` is the source zero-padded by
``pad`` (top, bottom, left, right; negative = cropped). It is defined on the whole plane (``x`` is zero
outside the image), which is what makes border handling checkable: zero-padding ``y`` is exact only where
the plane's value of ``y`` there is already zero (or the pad value), see ``Form.pad``. Every kernel
operation goes through ``edgerep.reparam.fuse``; the only math kept here is the geometry bookkeeping and
two small kernel re-layouts fuse.py does not have (``regroup_kernel``, ``place_kernel``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fuse import (
    KernelBias,
    add_branches,
    avg_pool_kernel,
    fold_bn,
    identity_kernel,
    make_conv,
    merge_sequential,
    pad_kernel,
    scale_kernel,
)

__all__ = ["Form", "NotExact", "place_kernel", "regroup_kernel"]


class NotExact(ValueError):
    """Composing this op into the branch would change the result (border, geometry or unsupported shape)."""


def regroup_kernel(kernel: Tensor, groups: int, to_groups: int) -> Tensor:
    """The same conv written with fewer groups (``to_groups`` divides ``groups``): a block-diagonal kernel.

    Output channel ``o`` keeps reading its own input channels; they only move to their column inside the
    coarser group. Needed to add a depthwise branch to a dense one or to merge convs of different groups.
    """
    if groups == to_groups:
        return kernel
    if groups % to_groups:
        raise ValueError(f"cannot regroup a {groups}-group kernel to {to_groups} groups")
    out, per_group = kernel.shape[:2]
    cin = per_group * groups
    o = torch.arange(out, device=kernel.device)
    offset = (o // (out // groups)) * per_group - (o // (out // to_groups)) * (cin // to_groups)
    cols = offset[:, None] + torch.arange(per_group, device=kernel.device)[None, :]
    new = kernel.new_zeros(out, cin // to_groups, *kernel.shape[2:])
    new[o[:, None], cols] = kernel
    return new


def place_kernel(kernel: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Zero-pad a kernel by possibly different amounts per side (``pad_kernel`` when it is centred)."""
    if top == bottom and left == right:
        return pad_kernel(kernel, (kernel.shape[-2] + 2 * top, kernel.shape[-1] + 2 * left))
    return F.pad(kernel, [left, right, top, bottom])


@dataclass(frozen=True)
class Form:
    kb: KernelBias
    in_channels: int
    groups: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    identity: bool = False  # kernel is the identity and bias zero: composing a conv needs no merge

    @classmethod
    def of_identity(cls, channels: int, dtype: torch.dtype, device: torch.device | None = None) -> Form:
        kernel = identity_kernel(channels, channels, dtype=dtype, device=device)
        kb = KernelBias(kernel, kernel.new_zeros(channels))
        return cls(kb, channels, channels, (1, 1), (1, 1), (0, 0, 0, 0), identity=True)

    @property
    def channels(self) -> int:
        return self.kb.kernel.shape[0]

    @property
    def ksize(self) -> tuple[int, int]:
        return tuple(self.kb.kernel.shape[-2:])

    def span(self, dim: int) -> int:
        """How far the kernel reaches along ``dim`` (0 = height): dilation * (k - 1)."""
        return self.dilation[dim] * (self.ksize[dim] - 1)

    # ---- per-channel affine ops: exact everywhere, including the plane outside the image
    def batch_norm(self, bn: nn.BatchNorm2d) -> Form:
        return replace(self, kb=fold_bn(self.kb.kernel, self.kb.bias, bn), identity=False)

    def affine(self, scale: Tensor | None = None, shift: Tensor | None = None) -> Form:
        kb = self.kb if scale is None else scale_kernel(self.kb, scale.to(self.kb.kernel))
        if shift is not None:
            kb = KernelBias(kb.kernel, kb.bias + shift.to(kb.bias))
        return replace(self, kb=kb, identity=False)

    # ---- geometry
    def pad_by(self, top: int, bottom: int, left: int, right: int, value: float = 0.0) -> Form:
        """Pad (or crop, for negative amounts) the output.

        Exact only if the plane's value of this form on the new border is ``value``: the receptive field
        of every new border pixel must lie wholly outside the image (then the form there equals its bias),
        and the bias must equal ``value`` in every channel. A 1x1 conv's output padded with its own bias
        (DBB's BN-and-pad) passes; a 3x3 "same" conv's output padded with zeros does not.
        """
        sides = ((top, 0, "top"), (bottom, 0, "bottom"), (left, 1, "left"), (right, 1, "right"))
        for amount, dim, side in sides:
            if amount <= 0:
                continue
            lo = self.pad[2 * dim]
            hi = self.pad[2 * dim + 1]
            reach = self.span(dim)
            inside = reach > lo + self.stride[dim] - 1 if side in ("top", "left") else reach > hi
            if inside:
                raise NotExact(
                    f"zero-padding the {side} of a {self.ksize[0]}x{self.ksize[1]} conv's output (stride "
                    f"{self.stride}, padding {self.pad}) is not the conv's value there"
                )
            self._check_bias_is(value, side)
        s_h, s_w = self.stride
        t, b, le, r = self.pad
        return replace(self, pad=(t + s_h * top, b + s_h * bottom, le + s_w * left, r + s_w * right))

    def _check_bias_is(self, value: float, side: str) -> None:
        bias = self.kb.bias.detach()
        tol = 64 * torch.finfo(bias.dtype).eps * max(1.0, float(bias.abs().max()), abs(value))
        err = float((bias - value).abs().max())
        if err > tol:
            raise NotExact(
                f"padding the {side} with {value:g} where the branch's value is its bias (up to {err:.3g} away): "
                "pad with the bias (as DBB's BN-and-pad does) or fold the pad into the conv"
            )

    # ---- convolution-like ops
    def conv(
        self,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        pad: tuple[int, int, int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> Form:
        """This form followed by a zero-padded conv: pad (checked), then a valid conv merged into the kernel."""
        f = self.pad_by(*pad)
        second = KernelBias(weight, bias if bias is not None else weight.new_zeros(weight.shape[0]))
        k2 = tuple(weight.shape[-2:])
        dilation = tuple(d if k > 1 else 1 for d, k in zip(dilation, k2))
        if f.identity:
            return Form(second, f.in_channels, groups, stride, dilation, f.pad)
        if f.ksize == (1, 1):
            g = math.gcd(f.groups, groups)
            first = KernelBias(regroup_kernel(f.kb.kernel, f.groups, g), f.kb.bias)
            second = KernelBias(regroup_kernel(second.kernel, groups, g), second.bias)
            kb = merge_sequential(first, second, g)
            new_stride = (f.stride[0] * stride[0], f.stride[1] * stride[1])
            new_dil = tuple(f.stride[i] * dilation[i] if k2[i] > 1 else 1 for i in range(2))
            return Form(kb, f.in_channels, g, new_stride, new_dil, f.pad)
        if k2 == (1, 1) and groups == weight.shape[0] == f.channels:  # per-channel scale (depthwise 1x1)
            kb = scale_kernel(f.kb, weight.reshape(-1))
            kb = KernelBias(kb.kernel, kb.bias + second.bias)
            return replace(f, kb=kb, stride=(f.stride[0] * stride[0], f.stride[1] * stride[1]), identity=False)
        raise NotExact(
            f"a {k2[0]}x{k2[1]} conv after a {f.ksize[0]}x{f.ksize[1]} conv does not merge into one conv "
            "(only 1x1 -> kxk and kxk -> per-channel scale do)"
        )

    def avg_pool(self, k: int, stride: tuple[int, int], padding: tuple[int, int]) -> Form:
        c = self.channels
        kernel = avg_pool_kernel(c, k, c, dtype=self.kb.kernel.dtype, device=self.kb.kernel.device)
        ph, pw = padding
        return self.conv(kernel, None, stride, (ph, ph, pw, pw), (1, 1), c)

    # ---- the sum of parallel branches
    @staticmethod
    def add(forms: list[Form]) -> Form:
        """One form equal to the sum: common groups, common frame, then ``add_branches``."""
        first = forms[0]
        if len({f.in_channels for f in forms}) > 1 or len({f.channels for f in forms}) > 1:
            raise NotExact(f"branches disagree on channels: {[(f.in_channels, f.channels) for f in forms]}")
        if len({f.stride for f in forms}) > 1:
            raise NotExact(f"branches have different strides {[f.stride for f in forms]}")
        dilation = []
        for dim in range(2):
            ds = {f.dilation[dim] for f in forms if f.ksize[dim] > 1}
            if len(ds) > 1:
                raise NotExact(f"branches have different dilations {sorted(ds)} along {'hw'[dim]}")
            dilation.append(ds.pop() if ds else 1)
        g = math.gcd(*[f.groups for f in forms])
        frames = []  # per dim: (start, end, out) in input pixels, relative to stride * output index
        for dim in range(2):
            d = dilation[dim]
            rows = []
            for f in forms:
                lo, hi = f.pad[2 * dim], f.pad[2 * dim + 1]
                span = d * (f.ksize[dim] - 1)
                rows.append((-lo, span - lo, lo + hi - span))
            if len({r[2] for r in rows}) > 1:
                pads = [f.pad for f in forms]
                raise NotExact(f"branches give different output sizes along {'hw'[dim]} (paddings {pads})")
            start, end = min(r[0] for r in rows), max(r[1] for r in rows)
            if any((r[0] - start) % d or (end - r[1]) % d for r in rows):
                raise NotExact(f"branch kernels do not fall on one dilation-{d} grid along {'hw'[dim]}")
            frames.append((rows, start, end, rows[0][2]))
        placed = []
        for i, f in enumerate(forms):
            (rh, sh, eh, _), (rw, sw, ew, _) = frames
            dh, dw = dilation
            kernel = place_kernel(
                regroup_kernel(f.kb.kernel, f.groups, g),
                (rh[i][0] - sh) // dh, (eh - rh[i][1]) // dh, (rw[i][0] - sw) // dw, (ew - rw[i][1]) // dw,
            )
            placed.append(KernelBias(kernel, f.kb.bias))
        kb = add_branches(placed)
        pad = []
        for dim, (_, start, end, out) in enumerate(frames):
            lo = -start
            pad += [lo, out + (end - start) - lo]
        return Form(kb, first.in_channels, g, first.stride, tuple(dilation), tuple(pad))

    # ---- channel slices and concatenation (chunk / split / cat along channels)
    def select(self, lo: int, hi: int) -> Form:
        """Output channels ``lo:hi`` of this form: its kernel rows. Only a dense (groups=1) form slices freely."""
        if self.groups != 1:
            raise NotExact(f"a channel slice of a {self.groups}-group conv (or of the branch source) is not one conv "
                           "of the same input")
        kb = KernelBias(self.kb.kernel[lo:hi], self.kb.bias[lo:hi])
        return replace(self, kb=kb, identity=False)

    @staticmethod
    def concat(forms: list[Form]) -> Form:
        """Forms concatenated along channels: each padded with zero rows to the total, then ``Form.add``.

        Dense forms only: concatenating grouped pieces would need a dense kernel (more MACs than the source).
        """
        if any(f.groups != 1 for f in forms):
            raise NotExact("concatenating grouped convs (or the branch source itself) would make a dense conv")
        total = sum(f.channels for f in forms)
        padded, start = [], 0
        for f in forms:
            k, b = f.kb
            rows = (start, total - start - f.channels)
            kernel = F.pad(k, [0, 0, 0, 0, 0, 0, *rows])
            padded.append(replace(f, kb=KernelBias(kernel, F.pad(b, list(rows))), identity=False))
            start += f.channels
        return Form.add(padded)

    def negate(self) -> Form:
        return self.affine(scale=self.kb.bias.new_full((self.channels,), -1.0))

    # ---- the deploy module
    def to_module(self) -> nn.Module:
        """One ``nn.Conv2d``; a ``ZeroPad2d`` before it only when the padding is lopsided."""
        t, b, le, r = self.pad
        if min(self.pad) < 0:
            raise NotExact(f"the merged conv would need cropping its input (padding {self.pad})")
        geometry = _Geometry(self.in_channels, self.stride, (0, 0), self.dilation, self.groups)
        if t == b and le == r:
            return make_conv(self.kb, geometry, padding=(t, le))
        return nn.Sequential(nn.ZeroPad2d((le, r, t, b)), make_conv(self.kb, geometry))


@dataclass
class _Geometry:
    """What ``make_conv`` copies from its template (``fuse.ConvGeometry``)."""

    in_channels: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding_mode: str = "zeros"
