"""Which layers follow which: the structure the int8 transforms need, read from a torch.fx trace.

Only the trace is used; every transform changes the user's own modules (names stay), so each backend
exports the same module tree it would have exported without them. A model fx cannot trace gets no
structural transform (``chains`` raises ``NotTraceable`` and callers report it), never a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import BadInputError

# f(s * x) = s * f(x) for every s > 0: scaling a channel before them equals scaling it after.
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU)
_HOMOGENEOUS_FUNCTIONS = (F.relu, torch.relu, F.leaky_relu)
_TRANSPARENT_MODULES = (nn.Identity, nn.Dropout)
QUANTIZABLE = (nn.Conv2d, nn.Linear)


class NotTraceable(Exception):
    """torch.fx could not trace the model (data-dependent control flow, unsupported calls)."""


@dataclass(frozen=True)
class Chain:
    """``first`` -> (BatchNorm ``bn``)? -> (positively homogeneous activation)? -> ``second``, each used once."""

    first: str
    second: str
    bn: str | None = None


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "no structure known"
        raise NotTraceable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, BatchNorm) module names where the BatchNorm is the conv's only consumer."""
    gm = trace(model)
    mods = dict(model.named_modules())
    calls = _call_counts(gm)
    pairs = []
    for node in gm.graph.nodes:
        if not _is_module(node, mods, nn.Conv2d) or calls[node.target] != 1 or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if _is_module(user, mods, nn.BatchNorm2d) and calls[user.target] == 1:
            pairs.append((node.target, user.target))
    return pairs


def chains(model: nn.Module) -> list[Chain]:
    """Consecutive conv pairs whose middle channels may be rescaled without changing the function."""
    gm = trace(model)
    mods = dict(model.named_modules())
    calls = _call_counts(gm)
    found = []
    for node in gm.graph.nodes:
        if not _is_module(node, mods, nn.Conv2d) or calls[node.target] != 1:
            continue
        bn, cur, seen_act = None, node, False
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if _is_module(nxt, mods, nn.BatchNorm2d) and bn is None and not seen_act and calls[nxt.target] == 1:
                bn = nxt.target
            elif _homogeneous(nxt, mods) and not seen_act:
                seen_act = True
            elif _is_module(nxt, mods, _TRANSPARENT_MODULES):
                pass
            elif _is_module(nxt, mods, nn.Conv2d) and calls[nxt.target] == 1 and nxt.args[0] is cur:
                found.append(Chain(node.target, nxt.target, bn))
                break
            else:
                break
            cur = nxt
    return found


def layer_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the conv / linear modules in the order one forward pass calls them."""
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, _i, n=name: order.append(n) if n not in order else None)
        for name, m in model.named_modules()
        if isinstance(m, QUANTIZABLE)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per image of each conv / linear module, from one forward pass over ``example``."""
    macs: dict[str, int] = {}

    def count(name: str, m: nn.Module, out: torch.Tensor) -> None:
        per_output = m.in_features if isinstance(m, nn.Linear) else m.weight[0].numel()  # (C/groups)*kh*kw
        macs[name] = macs.get(name, 0) + out.numel() // out.shape[0] * per_output

    hooks = [m.register_forward_hook(lambda m, _i, o, n=name: count(n, m, o))
             for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return macs


def resolve_layers(model: nn.Module, spec: str | list[str] | None, example: torch.Tensor) -> list[str]:
    """``keep_fp`` as module names: "first" / "last" mean the first / last conv or linear layer run."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else (spec or [])) if s.strip()]
    items = [s for s in items if s.lower() != "none"]
    if not items:
        return []
    order = layer_order(model, example)
    names = dict(model.named_modules())
    out: list[str] = []
    for item in items:
        if item.lower() in ("first", "last"):
            if not order:
                raise BadInputError("keep_fp=first/last: the model has no conv or linear layer")
            name = order[0] if item.lower() == "first" else order[-1]
        elif item in names and isinstance(names[item], QUANTIZABLE):
            name = item
        else:
            hint = ", ".join(order[:3] + ["...", *order[-2:]] if len(order) > 5 else order)
            raise BadInputError(
                f"keep_fp: {item!r} is not a conv or linear layer of the model; use first, last or names like {hint}"
            )
        if name not in out:
            out.append(name)
    return out


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _call_counts(gm: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def _is_module(node: fx.Node, mods: dict[str, nn.Module], kinds) -> bool:
    return node.op == "call_module" and isinstance(mods.get(node.target), kinds)


def _homogeneous(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    if _is_module(node, mods, _HOMOGENEOUS_MODULES):
        return True
    return node.op == "call_function" and node.target in _HOMOGENEOUS_FUNCTIONS
