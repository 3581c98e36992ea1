"""Tracing any model into an FX graph, and reading what the graph computes without running the model.

``trace`` falls back to keeping a submodule opaque (an FX leaf) when its own ``forward`` cannot be traced
(data-dependent control flow): the rest of the model is still converted and the report names the leaf.
``Constants`` evaluates nodes that depend on parameters only (a kernel built from a basis, a mask, a BN's
shift): to the pass they are just tensors. ``size_expr`` reads ``x.shape`` arithmetic symbolically,
so a crop like ``x[..., 1 : w - 1]`` is recognised for every input size, not only the traced one.
"""

from __future__ import annotations

import operator
import sys
from dataclasses import dataclass

import torch
from torch import fx, nn

from ...errors import BadInputError

__all__ = ["Constants", "SizeExpr", "UntraceableError", "size_expr", "trace"]

_MAX_LEAVES = 64


class UntraceableError(BadInputError):
    """The model's own forward cannot be traced by torch.fx."""


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> tuple[fx.GraphModule, dict[str, str]]:
    """``model`` as a GraphModule, plus the submodules kept opaque because they do not trace (name -> why)."""
    names = {id(m): n for n, m in model.named_modules()}
    leaves: dict[str, str] = {}
    while True:
        tracer = _LeafTracer(set(leaves))
        try:
            graph = tracer.trace(model)
            return fx.GraphModule(tracer.root, graph, type(model).__name__), leaves
        except Exception as exc:  # any tracing failure: find the module whose forward raised it
            culprit = _failing_module(sys.exc_info()[2], names)
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if not culprit or culprit in leaves or len(leaves) >= _MAX_LEAVES:
                raise UntraceableError(
                    f"torch.fx cannot trace {type(model).__name__}"
                    f"{' (in ' + culprit + ')' if culprit else ''}: {why}; the generic pass needs a traceable "
                    "forward (no data-dependent control flow), or use the block-aware conversion"
                ) from None
            leaves[culprit] = why


def _failing_module(tb, names: dict[int, str]) -> str:
    """The innermost module ``forward`` (other than the root) on the traceback, by qualified name."""
    found = ""
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "forward" and isinstance(owner, nn.Module) and names.get(id(owner)):
            found = names[id(owner)]
        tb = tb.tb_next
    return found


class Constants:
    """Values of nodes that depend on no graph input (parameters, buffers and arithmetic on them)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self._is: dict[fx.Node, bool] = {}
        self._value: dict[fx.Node, object] = {}

    def is_const(self, arg: object) -> bool:
        if not isinstance(arg, fx.Node):
            return not isinstance(arg, (list, tuple, dict, slice)) or all(
                self.is_const(a) for a in _flatten(arg)
            )
        if arg not in self._is:
            if arg.op == "get_attr":
                self._is[arg] = True
            elif arg.op in ("call_function", "call_method", "call_module"):
                inputs = list(arg.all_input_nodes)
                self._is[arg] = bool(inputs) and all(self.is_const(n) for n in inputs)
            else:
                self._is[arg] = False
        return self._is[arg]

    def value(self, arg: object) -> object:
        if not isinstance(arg, fx.Node):
            return fx.node.map_arg(arg, self.value)
        if arg not in self._value:
            self._value[arg] = self._evaluate(arg)
        return self._value[arg]

    @torch.no_grad()
    def _evaluate(self, node: fx.Node) -> object:
        if node.op == "get_attr":
            obj = self.gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        args = fx.node.map_arg(node.args, self.value)
        kwargs = fx.node.map_arg(node.kwargs, self.value)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return self.modules[node.target](*args, **kwargs)


def _flatten(arg: object) -> list:
    if isinstance(arg, (list, tuple)):
        return [x for a in arg for x in _flatten(a)]
    if isinstance(arg, slice):
        return [arg.start, arg.stop, arg.step]
    if isinstance(arg, dict):
        return [x for a in arg.values() for x in _flatten(a)]
    return [arg]


@dataclass(frozen=True)
class SizeExpr:
    """``tensor.shape[dim] + offset``, or (``dim`` None) the tuple ``tensor.shape[dims]``."""

    tensor: fx.Node
    dim: int | None
    offset: int = 0
    dims: tuple[int, ...] = ()


def size_expr(arg: object, ndim_of) -> SizeExpr | int | None:
    """Read shape arithmetic symbolically; None when it is anything else."""
    if isinstance(arg, int):
        return arg
    if not isinstance(arg, fx.Node):
        return None
    if arg.op == "call_function" and arg.target is getattr and arg.args[1] == "shape":
        n = ndim_of(arg.args[0])
        return None if n is None else SizeExpr(arg.args[0], None, dims=tuple(range(n)))
    if arg.op == "call_method" and arg.target == "size":
        n = ndim_of(arg.args[0])
        if n is None:
            return None
        if len(arg.args) == 1 and not arg.kwargs:
            return SizeExpr(arg.args[0], None, dims=tuple(range(n)))
        d = arg.args[1] if len(arg.args) > 1 else arg.kwargs.get("dim")
        return SizeExpr(arg.args[0], d % n) if isinstance(d, int) else None
    if arg.op == "call_function" and arg.target is operator.getitem:
        base = size_expr(arg.args[0], ndim_of)
        key = arg.args[1]
        if isinstance(base, SizeExpr) and base.dim is None:
            if isinstance(key, int):
                return SizeExpr(base.tensor, base.dims[key])
            if isinstance(key, slice) and all(isinstance(v, (int, type(None))) for v in _flatten(key)):
                return SizeExpr(base.tensor, None, dims=base.dims[key])
        return None
    if arg.op == "call_function" and arg.target in (operator.add, operator.sub):
        a, b = (size_expr(x, ndim_of) for x in arg.args)
        sign = 1 if arg.target is operator.add else -1
        if isinstance(a, SizeExpr) and a.dim is not None and isinstance(b, int):
            return SizeExpr(a.tensor, a.dim, a.offset + sign * b)
        if isinstance(a, int) and isinstance(b, SizeExpr) and b.dim is not None and sign == 1:
            return SizeExpr(b.tensor, b.dim, b.offset + a)
        if isinstance(a, int) and isinstance(b, int):
            return a + sign * b
    return None
