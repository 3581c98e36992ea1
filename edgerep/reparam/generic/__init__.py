"""Re-parameterization of any model as a graph pass, knowing no block class.

``reparameterize_generic(model)`` captures the model as a graph, finds every set of parallel branches
from one node to one sum whose branches are linear, shift-invariant ops (conv of any groups / stride /
padding / dilation, eval BatchNorm, identity, average pooling, zero padding and crops, per-channel scale
and shift, 1x1 -> kxk sequences with exact borders), and every conv -> BN style chain, and replaces each
with one ``nn.Conv2d`` built by ``edgerep.reparam.fuse``. What would not be exact is left as it is and
reported (``GenericReport.skipped``: module path, op and node), or raises in ``strict`` mode. No merge may leave
more convolutions, or (for conv chains and concatenations) more conv weights, than it removes.

Two front ends, one algebra: ``graph="aten"`` captures with ``torch.export`` (non-strict) and reads ATen ops
(``aten``); ``graph="fx"`` traces with torch.fx, keeping untraceable submodules opaque; ``"auto"`` (default) is
ATen, and FX where export cannot capture the model. Whatever the front end, the same ``Form`` algebra,
walk and rewrite run, and no merge leaves more convolutions than the source (checked at the end).

Package layout: ``trace`` (FX tracing, constants, shape arithmetic), ``aten`` (torch.export front end and
ATen ops), ``form`` (branch algebra), ``ops`` (which nodes are linear and what they do to a branch),
``rewrite`` (finding and replacing).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ...errors import BadInputError
from .aten import AtenClassifier, ExportFailed, export_graph
from .form import Form, NotExact
from .ops import Classifier
from .rewrite import GrowsGraph, Refusal, count_convs, find_chains, rewrite_chain, where
from .trace import Constants, UntraceableError, trace

__all__ = [
    "ExportFailed",
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
    frontend: str = ""
    convs: tuple[int, int] = (0, 0)  # convolution nodes before, after

    def summary(self) -> dict[str, int]:
        out = {"convs before": self.convs[0], "convs after": self.convs[1],
               "branch sets merged": len(self.sets), "conv chains folded": len(self.chains)}
        if self.skipped:
            out["sums left unmerged"] = len(self.skipped)
        if self.opaque_modules:
            out["untraceable modules kept"] = len(self.opaque_modules)
        return out


def reparameterize_generic(
    model: nn.Module, example_input: Tensor | None = None, *, strict: bool = False, train_mode: str = "fix",
    fold_chains: bool = True, graph: str = "auto",
) -> fx.GraphModule:
    """``model`` with every exact branch set and conv chain merged into one conv (a new GraphModule).

    ``example_input`` only fixes tensor shapes for the analysis (channels, which nodes are 4-d); by default
    a 1x(in_channels)x64x64 input, ``in_channels`` read from the first conv. See ``generic_pass``.
    """
    return generic_pass(model, example_input, strict=strict, train_mode=train_mode, fold_chains=fold_chains,
                        graph=graph)[0]


def generic_pass(
    model: nn.Module, example_input: Tensor | None = None, *, strict: bool = False, train_mode: str = "fix",
    fold_chains: bool = True, graph: str = "auto",
) -> tuple[fx.GraphModule, GenericReport]:
    """The generic pass and its report. The input model is not changed (it is copied first).

    ``strict``: raise ``NotReparameterizableError`` at the first refused branch set or untraceable part
    instead of leaving it and reporting it. ``train_mode`` as in ``reparameterize``: a model left in
    training mode is switched to eval with a warning (``"fix"``) or refused (``"error"``). ``fold_chains=False``
    merges parallel branch sets only and leaves plain conv -> BN chains as they are: that is exactly what the
    block-aware conversion does (its graph keeps the BNs outside re-param blocks), node for node.
    ``graph``: "aten", "fx" or "auto" (see the package docstring). A ``GraphModule`` from a loaded ``.pt2``
    program (``aten.program_module``) is taken as it is, with ATen rules.
    """
    if train_mode not in ("fix", "error"):
        raise ValueError(f"train_mode must be 'fix' or 'error', got {train_mode!r}")
    if graph not in ("auto", "aten", "fx"):
        raise ValueError(f"graph must be 'auto', 'aten' or 'fx', got {graph!r}")
    if model.training:
        if train_mode == "error":
            raise BadInputError("the model is in training mode; BatchNorm folding needs running statistics: "
                                "call model.eval() first")
        warnings.warn("model was in training mode; switched to eval() before fusing", stacklevel=2)
    model = copy.deepcopy(model)
    if model.training:  # an eval model keeps any submodule left in training mode: that one is refused
        model.eval()
    x = example_input if example_input is not None else _default_input(model)
    x = x.to(*_param_device_dtype(model))
    gm, leaves, classifier, frontend, x = _capture(model, x, graph)
    report = GenericReport(opaque_modules=leaves, frontend=frontend)
    if strict and leaves:
        name, why = next(iter(leaves.items()))
        raise NotReparameterizableError(f"module {name} cannot be traced by torch.fx ({why})")
    if classifier is AtenClassifier:  # functional graph: unused outputs (the dropped half of a chunk) go
        gm.graph.eliminate_dead_code()
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    before = count_convs(gm)
    for _ in range(_MAX_ROUNDS):
        if not _round(gm, report, strict, fold_chains, classifier):
            break
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    report.convs = (before, count_convs(gm))
    if report.convs[1] > before:  # the rewrite refuses such merges; this guards the guarantee itself
        raise AssertionError(f"generic pass grew the graph from {before} to {report.convs[1]} convolutions")
    return gm, report


def _capture(
    model: nn.Module, x: Tensor, graph: str
) -> tuple[fx.GraphModule, dict[str, str], type[Classifier], str, Tensor]:
    """The graph to work on, its opaque leaves, its classifier, the front end used and the shape example."""
    if isinstance(model, fx.GraphModule) and _is_aten(model):
        return model, {}, AtenClassifier, "aten (given graph)", x
    if graph != "fx":
        try:
            gm = export_graph(model, x)
            xs = x if x.shape[0] > 1 else x.expand(2, *x.shape[1:]).contiguous()
            return gm, {}, AtenClassifier, "aten", xs
        except ExportFailed as exc:
            if graph == "aten":
                raise
            fallback = f"fx ({exc})"
    else:
        fallback = "fx"
    gm, leaves = trace(model)
    return gm, leaves, Classifier, fallback, x


def _is_aten(gm: fx.GraphModule) -> bool:
    return any(isinstance(n.target, torch._ops.OpOverload) for n in gm.graph.nodes)


def _round(
    gm: fx.GraphModule, report: GenericReport, strict: bool, fold_chains: bool, classifier: type[Classifier]
) -> bool:
    """One analysis + rewrite of every chain end; True if anything changed."""
    ends, refusals = find_chains(gm, Constants(gm), classifier)
    known = {r.node for r in report.skipped}
    for r in refusals:
        if strict:
            raise NotReparameterizableError(f"cannot merge the branches at {r} (strict mode)")
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
        except GrowsGraph as exc:
            if branch.sets and where(end) not in known:
                report.skipped.append(Refusal(where(end), str(exc)))
            continue
        except NotExact as exc:
            if branch.sets:
                if strict:
                    raise NotReparameterizableError(f"cannot merge the branches at {where(end)}: {exc}") from None
                report.skipped.append(Refusal(where(end), str(exc)))
            continue
        if new is None:
            continue
        replaced[end] = new
        (report.sets if branch.sets else report.chains).append(new.target)
        changed = True
    if changed:
        gm.recompile()
    return changed


def _default_input(model: nn.Module) -> Tensor:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return torch.zeros(1, m.in_channels, 64, 64)
    raise BadInputError("cannot guess the model's input shape (no Conv2d found): pass example_input")


def _param_device_dtype(gm: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next((p for p in gm.parameters() if p.is_floating_point()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)

