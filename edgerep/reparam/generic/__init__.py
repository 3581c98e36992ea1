"""Re-parameterization of any model as a graph pass, knowing no block class.

``reparameterize_generic(model)`` traces the model with torch.fx, finds every set of parallel branches
from one node to one sum whose branches are linear, shift-invariant ops (conv of any groups / stride /
padding / dilation, eval BatchNorm, identity, average pooling, zero padding and crops, per-channel scale
and shift, 1x1 -> kxk sequences with exact borders), and every conv -> BN style chain, and replaces each
with one ``nn.Conv2d`` built by ``edgerep.reparam.fuse``. What would not be exact is left as it is and
reported (``GenericReport.skipped``), or raises in ``strict`` mode, naming the FX node.

Package layout: ``trace`` (FX tracing, constants, shape arithmetic), ``form`` (branch algebra),
``ops`` (which nodes are linear and what they do to a branch), ``rewrite`` (finding and replacing).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ...errors import BadInputError
from .form import Form, NotExact
from .rewrite import Refusal, find_chains, rewrite_chain
from .trace import Constants, UntraceableError, trace

__all__ = [
    "Form",
    "GenericReport",
    "NotReparameterizableError",
    "UntraceableError",
    "generic_pass",
    "reparameterize_generic",
]

_MAX_ROUNDS = 4


class NotReparameterizableError(BadInputError):
    """Strict mode: a branch set (or an untraceable part) cannot be merged exactly; names the FX node."""


@dataclass
class GenericReport:
    """What the pass did: merged branch sets and chains (new module names), and what it refused."""

    sets: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    skipped: list[Refusal] = field(default_factory=list)
    opaque_modules: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        out = {"branch sets merged": len(self.sets), "conv chains folded": len(self.chains)}
        if self.skipped:
            out["sums left unmerged"] = len(self.skipped)
        if self.opaque_modules:
            out["untraceable modules kept"] = len(self.opaque_modules)
        return out


def reparameterize_generic(
    model: nn.Module, example_input: Tensor | None = None, *, strict: bool = False, train_mode: str = "fix",
    fold_chains: bool = True,
) -> fx.GraphModule:
    """``model`` with every exact branch set and conv chain merged into one conv (a new GraphModule).

    ``example_input`` only fixes tensor shapes for the analysis (channels, which nodes are 4-d); by default
    a 1x(in_channels)x64x64 input, ``in_channels`` read from the first conv. See ``generic_pass``.
    """
    return generic_pass(model, example_input, strict=strict, train_mode=train_mode, fold_chains=fold_chains)[0]


def generic_pass(
    model: nn.Module, example_input: Tensor | None = None, *, strict: bool = False, train_mode: str = "fix",
    fold_chains: bool = True,
) -> tuple[fx.GraphModule, GenericReport]:
    """The generic pass and its report. The input model is not changed (it is copied first).

    ``strict``: raise ``NotReparameterizableError`` at the first refused branch set or untraceable part
    instead of leaving it and reporting it. ``train_mode`` as in ``reparameterize``: a model left in
    training mode is switched to eval with a warning (``"fix"``) or refused (``"error"``). ``fold_chains=False``
    merges parallel branch sets only and leaves plain conv -> BN chains as they are: that is exactly what the
    block-aware conversion does (its graph keeps the BNs outside re-param blocks), node for node.
    """
    if train_mode not in ("fix", "error"):
        raise ValueError(f"train_mode must be 'fix' or 'error', got {train_mode!r}")
    if model.training:
        if train_mode == "error":
            raise BadInputError("the model is in training mode; BatchNorm folding needs running statistics: "
                                "call model.eval() first")
        warnings.warn("model was in training mode; switched to eval() before fusing", stacklevel=2)
    model = copy.deepcopy(model)
    if model.training:  # an eval model keeps any submodule left in training mode: that one is refused
        model.eval()
    gm, leaves = trace(model)
    report = GenericReport(opaque_modules=leaves)
    if strict and leaves:
        name, why = next(iter(leaves.items()))
        raise NotReparameterizableError(f"module {name} cannot be traced by torch.fx ({why})")
    x = example_input if example_input is not None else _default_input(gm)
    with torch.no_grad():
        ShapeProp(gm).propagate(x.to(*_param_device_dtype(gm)))
    for _ in range(_MAX_ROUNDS):
        if not _round(gm, report, strict, fold_chains):
            break
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, report


def _round(gm: fx.GraphModule, report: GenericReport, strict: bool, fold_chains: bool) -> bool:
    """One analysis + rewrite of every chain end; True if anything changed."""
    ends, refusals = find_chains(gm, Constants(gm))
    known = {r.node for r in report.skipped}
    for r in refusals:
        if strict:
            raise NotReparameterizableError(f"cannot merge the branches at FX node {r} (strict mode)")
        if r.node not in known:  # a later round may see the same refused set again
            report.skipped.append(r)
    replaced: dict[fx.Node, fx.Node] = {}
    changed = False
    for end, branch in ends:
        if not (branch.sets or fold_chains):
            continue
        src = replaced.get(branch.src, branch.src)
        try:
            new = rewrite_chain(gm, end, branch, src)
        except NotExact as exc:
            if branch.sets:
                if strict:
                    raise NotReparameterizableError(f"cannot merge the branches at FX node {end.name}: {exc}") from None
                report.skipped.append(Refusal(end.name, str(exc)))
            continue
        if new is None:
            continue
        replaced[end] = new
        (report.sets if branch.sets else report.chains).append(new.target)
        changed = True
    if changed:
        gm.recompile()
    return changed


def _default_input(gm: fx.GraphModule) -> Tensor:
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, nn.Conv2d):
                return torch.zeros(1, m.in_channels, 64, 64)
    raise BadInputError("cannot guess the model's input shape (no Conv2d found): pass example_input")


def _param_device_dtype(gm: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next((p for p in gm.parameters() if p.is_floating_point()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)

