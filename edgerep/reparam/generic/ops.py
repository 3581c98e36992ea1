"""Which FX nodes are linear, shift-invariant ops, and what each does to a branch's ``Form``.

``Classifier.classify`` answers for one node: a ``Linear`` op on one tensor input (conv, eval BN, average pool,
zero padding, crop, per-channel scale or shift, identity), a ``Sum`` of tensor inputs, or ``Opaque`` with
the reason (a non-linear op, or a linear one that is not exact here: BN in training mode, reflect padding,
``count_include_pad=False``...). Reasons name the module or function so a refusal can name the node.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..fuse import bn_affine, pair
from .form import Form
from .trace import Constants, SizeExpr, size_expr

__all__ = ["Classifier", "Linear", "Opaque", "Sum"]


@dataclass
class Linear:
    input: fx.Node
    apply: Callable[[Form], Form]
    fanout: bool = False  # reads its input through a split other nodes read too: starts a new branch there


@dataclass
class Sum:
    terms: list[tuple[fx.Node, int]]  # (tensor input, +1 or -1)
    concat: bool = False  # concatenation along channels instead of a sum


@dataclass
class Opaque:
    reason: str
    inexact: bool = False  # a linear op that would not be exact here (worth a refusal, not just a boundary)
    report: bool = False  # refused wherever it is (batch norm on batch statistics), not only inside a branch set


_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}
_NEG = {operator.neg, torch.neg, "neg"}
_NOOP_METHODS = {"contiguous", "clone"}


class Classifier:
    def __init__(self, gm: fx.GraphModule, consts: Constants) -> None:
        self.gm = gm
        self.consts = consts
        self.modules = dict(gm.named_modules())

    def ndim(self, node: fx.Node) -> int | None:
        meta = node.meta.get("tensor_meta")
        return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def classify(self, node: fx.Node) -> Linear | Sum | Opaque:
        if node.op == "call_module":
            return self._module(node, self.modules[node.target])
        if node.op == "call_function" or node.op == "call_method":
            try:
                return self._function(node)
            except _Bad as bad:
                return Opaque(str(bad), inexact=True)
        return Opaque(f"{node.op} node")

    # ---- modules
    def _module(self, node: fx.Node, m: nn.Module) -> Linear | Opaque:
        kind = type(m).__name__
        if len(node.args) != 1 or node.kwargs:
            return Opaque(f"{kind} called with several inputs")
        x = node.args[0]
        if type(m) is nn.Conv2d:
            if m.padding_mode != "zeros" and any(pair(m.padding) if not isinstance(m.padding, str) else (1,)):
                return Opaque(f"Conv2d with padding_mode={m.padding_mode!r} (only zero padding is exact)", True)
            pad = _conv_padding(m.padding, m.kernel_size, m.dilation, m.stride)
            if pad is None:
                return Opaque("Conv2d padding='same' with stride > 1", True)
            return Linear(x, lambda f: f.conv(m.weight, m.bias, m.stride, pad, m.dilation, m.groups))
        if isinstance(m, nn.BatchNorm2d):
            if m.training:
                return Opaque(f"{kind} in training mode (batch statistics): call model.eval()", True, report=True)
            if m.running_mean is None:
                return Opaque(f"{kind} without running statistics", True)
            return Linear(x, lambda f: f.batch_norm(m))
        if type(m) is nn.AvgPool2d:
            return self._avg(
                x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override
            )
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
            left, right, top, bottom = m.padding
            return Linear(x, lambda f: f.pad_by(top, bottom, left, right, float(m.value)))
        if isinstance(m, nn.Identity) or (isinstance(m, (nn.Dropout, nn.Dropout2d)) and not m.training):
            return Linear(x, lambda f: f)
        return Opaque(f"{kind} (not a linear shift-invariant op)")

    def _avg(self, x, kernel_size, stride, padding, ceil_mode, include_pad, divisor) -> Linear | Opaque:
        k = pair(kernel_size)
        s = pair(stride if stride not in (None, [], ()) else kernel_size)
        p = pair(padding)
        if k[0] != k[1]:
            return Opaque(f"AvgPool2d with a non-square {k} window", True)
        if ceil_mode:
            return Opaque("AvgPool2d with ceil_mode=True (partial windows are averaged over fewer pixels)", True)
        if divisor is not None:
            return Opaque("AvgPool2d with divisor_override", True)
        if not include_pad and any(p):
            return Opaque("AvgPool2d with count_include_pad=False and padding (borders average fewer pixels)", True)
        return Linear(x, lambda f: f.avg_pool(k[0], s, p))

    # ---- functions and methods
    def _function(self, node: fx.Node) -> Linear | Sum | Opaque:
        t = node.target
        args, kwargs = node.args, node.kwargs
        if t in (F.conv2d, torch.conv2d):
            return self._conv_fn(node)
        if t is F.avg_pool2d:
            return self._avg_fn(node)
        if t is F.pad:
            return self._pad_fn(node)
        if t is F.batch_norm:
            names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
            a = _bind(args, kwargs, names, {"weight": None, "bias": None, "training": False, "momentum": 0.1,
                                             "eps": 1e-5})
            return self.batch_norm(node, a)
        if t is F.dropout:
            a = _bind(args, kwargs, ("input", "p", "training"), {"p": 0.5, "training": True})
            return Opaque("dropout in training mode") if a["training"] else Linear(a["input"], lambda f: f)
        if t is operator.getitem and isinstance(args[0], fx.Node) and self.ndim(args[0]) == 4:
            return self._crop(node)
        if node.op == "call_method" and t in _NOOP_METHODS and len(args) == 1 and not kwargs:
            return Linear(args[0], lambda f: f)
        if t in _NEG and len(args) == 1:
            return Linear(args[0], lambda f: f.negate())
        if t in _ADD or t in _SUB:
            return self._add(node, -1 if t in _SUB else 1)
        if t in _MUL or t in _DIV:
            return self._scale(node, divide=t in _DIV)
        return Opaque(f"{getattr(t, '__name__', t)} (not a linear shift-invariant op)")

    def _avg_fn(self, node: fx.Node) -> Linear | Opaque:
        names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        a = _bind(node.args, node.kwargs, names, {"stride": None, "padding": 0, "ceil_mode": False,
                                                  "count_include_pad": True, "divisor_override": None})
        self._const_args(node, a, names[1:])
        return self._avg(a["input"], *(self.consts.value(a[n]) for n in names[1:]))

    def _conv_fn(self, node: fx.Node) -> Linear | Opaque:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        a = _bind(node.args, node.kwargs, names, {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
        self._const_args(node, a, names[1:])
        w, b, s, p, d, g = (self.consts.value(a[n]) for n in names[1:])
        if not isinstance(w, Tensor) or w.dim() != 4:
            return Opaque("conv2d without a 4-d weight")
        pad = _conv_padding(p, tuple(w.shape[-2:]), pair(d), pair(s))
        if pad is None:
            return Opaque("conv2d padding='same' with stride > 1", True)
        return Linear(a["input"], lambda f: f.conv(w, b, pair(s), pad, pair(d), int(g)))

    def batch_norm(self, node: fx.Node, a: dict) -> Linear | Opaque:
        """Functional batch norm (timm's BatchNormAct2d, an ATen node): folds in eval on running statistics."""
        if self.consts.is_const(a["training"]) and not self.consts.value(a["training"]):
            self._const_args(node, a, ("running_mean", "running_var", "weight", "bias", "eps"))
            if a["running_mean"] is None or a["running_var"] is None:
                return Opaque("batch_norm without running statistics", True, report=True)
            mean, var, w, b = (self.consts.value(a[n]) for n in ("running_mean", "running_var", "weight", "bias"))
            scale, shift = bn_affine(mean, var, w, b, float(self.consts.value(a["eps"])))
            return Linear(a["input"], lambda f: f.affine(scale, shift))
        return Opaque("batch_norm with training=True (batch statistics, not foldable): put that module in eval() "
                      "or make it use running statistics", True, report=True)

    def _pad_fn(self, node: fx.Node) -> Linear | Opaque:
        a = _bind(node.args, node.kwargs, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
        self._const_args(node, a, ("pad", "mode", "value"))
        pad, mode, value = (self.consts.value(a[n]) for n in ("pad", "mode", "value"))
        pad = [int(v) for v in pad]
        if len(pad) not in (2, 4) or (len(pad) == 4 and self.ndim(a["input"]) != 4):
            return Opaque(f"pad {pad} reaches beyond the two spatial dims", True)
        if mode != "constant":
            return Opaque(f"pad mode {mode!r} (only constant padding is exact)", True)
        left, right, top, bottom = (pad + [0, 0])[:4]
        return Linear(a["input"], lambda f: f.pad_by(top, bottom, left, right, float(value or 0.0)))

    def _crop(self, node: fx.Node) -> Linear | Opaque:
        x, key = node.args
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (4 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (4 - len(key))
        if len(key) != 4 or not all(isinstance(k, slice) for k in key):
            return Opaque("indexing that is not a spatial crop")
        crops = []
        for dim, k in enumerate(key):
            if k.step not in (None, 1):
                return Opaque(f"strided slicing along dim {dim}", True)
            start = 0 if k.start is None else size_expr(k.start, self.ndim)
            stop = size_expr(k.stop, self.ndim) if k.stop is not None else None
            if not isinstance(start, int) or start < 0:
                return Opaque(f"slice start {k.start} along dim {dim} is not a fixed offset", True)
            if stop is None and k.stop is None:
                end = 0
            elif isinstance(stop, SizeExpr) and stop.tensor is x and stop.dim == dim and stop.offset <= 0:
                end = -stop.offset
            else:
                return Opaque(f"slice stop along dim {dim} is not 'size - c' of the sliced tensor", True)
            if dim < 2 and (start or end):
                return Opaque(f"slicing along dim {dim} (batch or channels)", True)
            crops.append((start, end))
        (t, b), (le, r) = crops[2], crops[3]
        return Linear(x, lambda f: f.pad_by(-t, -b, -le, -r))

    def _add(self, node: fx.Node, sign: int) -> Linear | Sum | Opaque:
        a = _bind(node.args, node.kwargs, ("input", "other", "alpha"), {"alpha": 1})
        x, y, alpha = a["input"], a["other"], a["alpha"]
        if not self.consts.is_const(alpha):
            return Opaque("add with a tensor alpha")
        alpha = self.consts.value(alpha)
        cx, cy = self.consts.is_const(x), self.consts.is_const(y)
        if not cx and not cy:
            if alpha != 1:
                return Opaque("add with alpha != 1 of two tensors", True)
            return Sum([(x, 1), (y, sign)])
        if cx and cy:
            return Opaque("constant arithmetic")
        tensor, const = (y, x) if cx else (x, y)
        shift = self._per_channel(self.consts.value(const), tensor) * (sign * alpha)
        if cx and sign < 0:  # const - x
            return Linear(tensor, lambda f: f.negate().affine(shift=-shift))
        return Linear(tensor, lambda f: f.affine(shift=shift))

    def _scale(self, node: fx.Node, divide: bool) -> Linear | Opaque:
        if len(node.args) != 2 or node.kwargs:
            return Opaque("mul/div with extra arguments")
        x, y = node.args
        cx, cy = self.consts.is_const(x), self.consts.is_const(y)
        if cx == cy or (divide and cx):
            return Opaque("product of two tensors" if not cx else "constant arithmetic")
        tensor, const = (y, x) if cx else (x, y)
        scale = self._per_channel(self.consts.value(const), tensor)
        return Linear(tensor, lambda f: f.affine(scale=1.0 / scale if divide else scale))

    def _per_channel(self, value: object, tensor: fx.Node) -> Tensor:
        """A constant that broadcasts over (N, C, H, W) per channel only, as a (C,) vector."""
        meta = tensor.meta.get("tensor_meta")
        if meta is None or len(meta.shape) != 4:
            raise _Bad("arithmetic on a tensor whose shape is unknown or not 4-d")
        c = meta.shape[1]
        v = torch.as_tensor(value, dtype=meta.dtype)
        if v.dim() > 4:
            raise _Bad("constant with more than 4 dims")
        shape = (1,) * (4 - v.dim()) + tuple(v.shape)
        if shape[0] != 1 or shape[2:] != (1, 1) or shape[1] not in (1, c):
            raise _Bad(f"constant of shape {tuple(v.shape)} is not per-channel (1, C, 1, 1)")
        return v.reshape(-1).expand(c).clone()

    def _const_args(self, node: fx.Node, a: dict, names: tuple[str, ...]) -> None:
        for n in names:
            if not self.consts.is_const(a[n]):
                raise _Bad(f"{getattr(node.target, '__name__', node.target)} argument {n!r} depends on the input")


class _Bad(Exception):
    pass


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict) -> dict:
    out = dict(defaults)
    out.update(zip(names, args))
    out.update(kwargs)
    missing = [n for n in names if n not in out]
    if missing:
        raise _Bad(f"missing arguments {missing}")
    return out


def _conv_padding(padding, kernel_size, dilation, stride) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of a conv's zero padding; PyTorch's 'same' puts the odd pixel at the end."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if pair(stride) != (1, 1):
            return None
        out = []
        for k, d in zip(pair(kernel_size), pair(dilation)):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)
