"""The ATen front end of the generic pass: torch.export the model, then read ATen ops as branch algebra.

``torch.export`` (non-strict) runs the model's own Python once, so code FX cannot trace symbolically
(``torch._assert``, shape checks, ``F.batch_norm`` on buffers as timm's ``BatchNormAct2d`` does, modules
called twice) comes out as plain ATen ops. ``export_graph`` returns ``ExportedProgram.module()``: parameters
are ``get_attr`` nodes again, so the pass's ``Constants``, ``Form`` algebra and rewrite work on it unchanged;
``AtenClassifier`` only says which ATen op is which linear op (the same handlers as the FX classifier).
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor, fx, nn

from ...errors import BadInputError
from .ops import Classifier, Linear, Opaque, Sum, _Bad, _bind

__all__ = ["AtenClassifier", "ExportFailed", "export_graph", "export_program", "program_module"]

aten = torch.ops.aten


class ExportFailed(BadInputError):
    """torch.export cannot capture the model (data-dependent control flow, unsupported Python)."""


def export_program(model: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) with the batch dimension left dynamic where the model allows it.

    A batch of one would be specialized by export, so the example is repeated to two first.
    """
    x = example if example.shape[0] > 1 else example.expand(2, *example.shape[1:]).contiguous()
    try:
        return torch.export.export(model, (x,), strict=False, dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as exc:  # noqa: BLE001 - any capture failure is reported as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportFailed(f"torch.export cannot capture {type(model).__name__}: {type(exc).__name__}: {first}") from None


def export_graph(model: nn.Module, example: Tensor) -> fx.GraphModule:
    """``model`` exported with ATen ops (``export_program``), parameters as attributes."""
    return program_module(export_program(model, example))


def program_module(ep: torch.export.ExportedProgram) -> fx.GraphModule:
    """The program as a GraphModule whose parameters and buffers are attributes (``get_attr`` nodes).

    A graph with in-place ops (``relu_``, ``add_``) is functionalized first (``run_decompositions({})``, no op
    decomposed): the pass reads every node as a value, which is only right when nothing mutates it later.
    """
    if any(isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable for n in ep.graph.nodes):
        ep = ep.run_decompositions({})
    unlifted = ep.module()  # refuses eval()/train(): rebuilt below as a plain GraphModule (same graph and code)
    gm = fx.GraphModule(unlifted, unlifted.graph, type(unlifted).__name__)
    return gm.eval()


_CONV = {aten.conv2d.default, aten.conv2d.padding}
_ADD = {aten.add.Tensor, aten.add_.Tensor, aten.add.Scalar, aten.add_.Scalar}
_SUB = {aten.sub.Tensor, aten.sub_.Tensor, aten.sub.Scalar, aten.sub_.Scalar}
_MUL = {aten.mul.Tensor, aten.mul_.Tensor, aten.mul.Scalar, aten.mul_.Scalar}
_DIV = {aten.div.Tensor, aten.div_.Tensor, aten.div.Scalar, aten.div_.Scalar}
_SAME = {aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default,
         aten.lift_fresh_copy.default}
_SPLIT = {aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default}
_BN_TRAIN = {aten._native_batch_norm_legit.default, aten._native_batch_norm_legit_functional.default,
             aten._native_batch_norm_legit.no_stats, aten.native_batch_norm.default}
CONV_OPS = frozenset(_CONV | {aten.convolution.default})


class AtenClassifier(Classifier):
    """``Classifier`` for ATen nodes; anything else (plain Python ops in the graph) goes to the FX rules."""

    def _function(self, node: fx.Node) -> Linear | Sum | Opaque:
        t = node.target
        if t is operator.getitem and isinstance(node.args[0], fx.Node) and node.args[0].op == "call_function":
            return self._getitem(node)
        if not isinstance(t, torch._ops.OpOverload):
            return super()._function(node)
        args, kwargs = node.args, node.kwargs
        if t in _CONV:
            return self._conv_fn(node)
        if t is aten.convolution.default:
            return self._convolution(node)
        if t is aten.batch_norm.default:
            names = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
            return self.batch_norm(node, _bind(args, kwargs, names, {}))
        if t in _BN_TRAIN:
            return Opaque(f"{t} (batch norm on batch statistics, not foldable): put that module in eval()",
                          True, report=True)
        if t is aten.avg_pool2d.default:
            return self._avg_fn(node)
        if t is aten.pad.default:
            return self._pad_fn(node)
        if t is aten.constant_pad_nd.default:
            a = _bind(args, kwargs, ("input", "pad", "value"), {"value": 0})
            return self._padded(node, a["input"], a["pad"], a["value"])
        if t is aten.slice.Tensor:
            return self._slice(node)
        if t is aten.cat.default:
            return self._cat(node)
        if t in _SAME or (t is aten.dropout.default and not _bind(args, kwargs, ("input", "p", "train"), {})["train"]):
            return Linear(args[0], lambda f: f)
        if t is aten.neg.default:
            return Linear(args[0], lambda f: f.negate())
        if t in _ADD or t in _SUB:
            return self._add(node, -1 if t in _SUB else 1)
        if t in _MUL or t in _DIV:
            return self._scale(node, divide=t in _DIV)
        return Opaque(f"{t} (not a linear shift-invariant op)")

    def _convolution(self, node: fx.Node) -> Linear | Opaque:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups")
        a = _bind(node.args, node.kwargs, names, {})
        if a["transposed"]:
            return Opaque("transposed convolution")
        self._const_args(node, a, ("weight", "bias"))
        w = self.consts.value(a["weight"])
        if not isinstance(w, Tensor) or w.dim() != 4:
            return Opaque("convolution without a 4-d weight")
        b = self.consts.value(a["bias"])
        s, p, d = (tuple(a[n]) for n in ("stride", "padding", "dilation"))
        pad = (p[0], p[0], p[1], p[1])
        return Linear(a["input"], lambda f: f.conv(w, b, s, pad, d, int(a["groups"])))

    def _padded(self, node: fx.Node, x: fx.Node, pad: object, value: object) -> Linear | Opaque:
        if not (self.consts.is_const(pad) and self.consts.is_const(value)):
            raise _Bad("pad amounts depend on the input")
        pad = [int(v) for v in self.consts.value(pad)]
        if len(pad) not in (2, 4):
            return Opaque(f"pad {pad} reaches beyond the two spatial dims", True)
        left, right, top, bottom = (pad + [0, 0])[:4]
        return Linear(x, lambda f: f.pad_by(top, bottom, left, right, float(self.consts.value(value) or 0.0)))

    def _slice(self, node: fx.Node) -> Linear | Opaque:
        a = _bind(node.args, node.kwargs, ("input", "dim", "start", "end", "step"),
                  {"dim": 0, "start": None, "end": None, "step": 1})
        x = a["input"]
        shape = self._shape(x)
        dim = a["dim"] % 4
        if not all(isinstance(a[n], (int, type(None))) for n in ("start", "end", "step")):
            return Opaque("slice with bounds that depend on the input size", True)
        start, end, step = slice(a["start"], a["end"], a["step"]).indices(shape[dim])
        if step != 1:
            return Opaque(f"strided slicing along dim {dim}", True)
        if dim == 0:
            return Linear(x, lambda f: f) if (start, end) == (0, shape[0]) else Opaque("slicing the batch", True)
        if dim == 1:
            return Linear(x, lambda f: f.select(start, end))
        lo, hi = start, shape[dim] - end
        crop = (lo, hi, 0, 0) if dim == 2 else (0, 0, lo, hi)
        return Linear(x, lambda f: f.pad_by(*(-c for c in crop)))

    def _getitem(self, node: fx.Node) -> Linear | Opaque:
        src, index = node.args
        t = src.target
        if t is aten._native_batch_norm_legit_no_training.default and index == 0:
            names = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")
            a = _bind(src.args, src.kwargs, names, {})
            a["training"] = False
            return self.batch_norm(src, a)
        if t in _BN_TRAIN and index == 0:
            return Opaque(f"{t} (batch norm on batch statistics, not foldable): put that module in eval()",
                          True, report=True)
        if t in _SPLIT and isinstance(index, int):
            return self._split_piece(node, src, index)
        return Opaque(f"item {index} of {t}")

    def _split_piece(self, node: fx.Node, src: fx.Node, index: int) -> Linear | Opaque:
        x = src.args[0]
        dim = src.args[2] if len(src.args) > 2 else src.kwargs.get("dim", 0)
        if dim % 4 != 1:
            return Opaque(f"{src.target} along dim {dim} (only channel splits are linear per branch)")
        c = self._shape(x)[1]
        if src.target is aten.chunk.default:
            per = -(-c // src.args[1])
            sizes = [min(per, c - i) for i in range(0, c, per)]
        elif src.target is aten.split.Tensor:
            per = src.args[1]
            sizes = [min(per, c - i) for i in range(0, c, per)]
        else:
            sizes = list(src.args[1])
        lo = sum(sizes[:index])
        hi = lo + sizes[index]
        return Linear(x, lambda f: f.select(lo, hi), fanout=sum(1 for u in src.users if u.users) > 1)

    def _cat(self, node: fx.Node) -> Sum | Opaque:
        a = _bind(node.args, node.kwargs, ("tensors", "dim"), {"dim": 0})
        if a["dim"] % 4 != 1 or any(self.ndim(t) != 4 for t in a["tensors"]):
            return Opaque(f"cat along dim {a['dim']} (only channel concatenation merges)")
        return Sum([(t, 1) for t in a["tensors"]], concat=True)

    def _shape(self, x: fx.Node) -> tuple[int, ...]:
        meta = x.meta.get("tensor_meta")
        if meta is None or len(meta.shape) != 4:
            raise _Bad("slicing a tensor whose shape is unknown or not 4-d")
        return tuple(int(v) for v in meta.shape)
