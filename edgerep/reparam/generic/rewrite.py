"""Finding branch sets in the graph and replacing each with one conv.

One forward walk over the graph gives every 4-d tensor node a ``Branch``: the node it is a linear function
of (its *source*), that function as a ``Form``, and the nodes computing it. A linear op extends its input's
branch when that input has no other user; a sum merges its terms' branches when they share a source. What
no user extends is a chain end: its nodes become one conv if that removes nodes. A sum whose terms do not
share a source, although they meet further up through single-input ops, is a refused set: the report (or,
in strict mode, the error) names the node that stops it (non-linear op, output used elsewhere, inexact op).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from .aten import CONV_OPS
from .form import Form, NotExact
from .ops import Classifier, Linear, Opaque, Sum
from .trace import Constants

__all__ = ["Branch", "GrowsGraph", "Refusal", "conv_weights", "convs_in", "count_convs", "find_chains", "rewrite_chain", "where"]

_CALLS = ("call_function", "call_method", "call_module")
_WALK_LIMIT = 64


class GrowsGraph(ValueError):
    """The merge would leave more convolutions than the source: it is not done."""


def convs_in(gm: fx.GraphModule, node: fx.Node) -> int:
    """2-d convolutions one node runs, whichever way the graph writes them (module, functional, ATen)."""
    if node.op == "call_module":
        return sum(isinstance(m, nn.Conv2d) for m in gm.get_submodule(node.target).modules())
    if node.op == "call_function":
        return int(node.target in (F.conv2d, torch.conv2d) or node.target in CONV_OPS)
    return 0


def conv_weights(gm: fx.GraphModule, node: fx.Node) -> int:
    """Weights of the convolutions one node runs: the cost a merge must not raise (MACs per output pixel)."""
    if node.op == "call_module":
        return sum(m.weight.numel() for m in gm.get_submodule(node.target).modules() if isinstance(m, nn.Conv2d))
    if not convs_in(gm, node):
        return 0
    w = node.args[1] if len(node.args) > 1 else node.kwargs["weight"]
    meta = w.meta.get("tensor_meta") if isinstance(w, fx.Node) else None
    return int(torch.Size(meta.shape).numel()) if meta is not None else int(w.numel())


def count_convs(gm: fx.GraphModule) -> int:
    """Convolutions in the graph (a module called twice counts twice: that is what runs)."""
    return sum(convs_in(gm, n) for n in gm.graph.nodes)


def where(node: fx.Node) -> str:
    """A node as a user finds it: the module path it came from and the op (``stages.1.bn (aten.batch_norm)``)."""
    stack = node.meta.get("nn_module_stack")
    path = list(stack.values())[-1][0] if stack else (node.target if node.op == "call_module" else "")
    op = node.target if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        op = str(node.target)
    return f"{path or '<model>'} ({op}, node {node.name})"


@dataclass
class Branch:
    src: fx.Node
    form: Form
    members: list[fx.Node]
    sets: int = 0  # sums inside: 0 = a plain chain (conv -> BN ...), else parallel branches merged
    concats: int = 0  # channel concatenations among those sets


@dataclass
class Refusal:
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node}: {self.reason}"


@dataclass
class _Walk:
    classifier: Classifier
    val: dict[fx.Node, Branch] = field(default_factory=dict)
    absorbed: set[fx.Node] = field(default_factory=set)
    stops: dict[fx.Node, str] = field(default_factory=dict)  # why a node is not part of its input's branch
    refusals: list[Refusal] = field(default_factory=list)

    def ndim(self, node: object) -> int | None:
        return self.classifier.ndim(node) if isinstance(node, fx.Node) else None

    def identity(self, node: fx.Node) -> Form:
        meta = node.meta["tensor_meta"]
        return Form.of_identity(meta.shape[1], meta.dtype)

    def view(self, a: fx.Node) -> Branch:
        """``a``'s branch as its user sees it: extendable only if that user is ``a``'s only user."""
        if a in self.val and len(a.users) == 1:
            return self.val[a]
        return Branch(a, self.identity(a), [])

    def linear(self, node: fx.Node, op: Linear) -> None:
        """Extend the input's branch by ``node``; where that is not exact, start a new branch at the input.

        An op that is not exact even on its plain input only records why: it is a refusal only if it
        sits inside a branch set, which the sum below finds (``_diagnose``).
        """
        base = Branch(op.input, self.identity(op.input), []) if op.fanout else self.view(op.input)
        try:
            self._extend(node, base, op)
        except ValueError as exc:  # NotExact, or fuse.py refusing shapes it cannot combine
            self.stops[node] = str(exc)
            if base.members:
                try:
                    self._extend(node, Branch(op.input, self.identity(op.input), []), op)
                except ValueError as exc2:
                    self.stops[node] = str(exc2)

    def _extend(self, node: fx.Node, base: Branch, op: Linear) -> None:
        form = op.apply(base.form)
        gm = self.classifier.gm
        if base.members and (base.concats or not base.sets) and convs_in(gm, node):
            grown = form.kb.kernel.numel() - base.form.kb.kernel.numel() - conv_weights(gm, node)
            if grown > 0:  # a 1x1 projection into a wider conv: fold up to here, start again at this conv
                raise NotExact(f"folding {node.name} into the conv before it would add {grown} weights")
        self.val[node] = Branch(base.src, form, base.members + [node], base.sets, base.concats)
        if base.members:
            self.absorbed.add(op.input)

    def sum(self, node: fx.Node, op: Sum) -> None:
        views = [(self.view(x), sign) for x, sign in op.terms]
        sources = {v.src for v, _ in views}
        if len(sources) > 1:
            self._diagnose(node, [v for v, _ in views])
            return
        try:
            forms = [v.form if s > 0 else v.form.negate() for v, s in views]
            form = Form.concat(forms) if op.concat else Form.add(forms)
            pieces = sum(f.kb.kernel.numel() for f in forms)
            if op.concat and form.kb.kernel.numel() > pieces:
                raise GrowsGraph(f"one conv for the concatenated branches would have {form.kb.kernel.numel()} "
                                 f"weights, the branches {pieces} (more MACs)")
        except ValueError as exc:
            ends = ", ".join(v.members[-1].name if v.members else v.src.name for v, _ in views)
            self.refusals.append(Refusal(where(node), f"branches ({ends}) from {views[0][0].src.name}: {exc}"))
            return
        members = list(dict.fromkeys(m for v, _ in views for m in v.members))
        self.val[node] = Branch(views[0][0].src, form, members + [node], 1 + sum(v.sets for v, _ in views),
                                int(op.concat) + sum(v.concats for v, _ in views))
        for (x, _), (v, _) in zip(op.terms, views):
            if v.members:
                self.absorbed.add(x)

    def _diagnose(self, node: fx.Node, views: list[Branch]) -> None:
        """Terms with different sources: a refused set if one source is reached from another's."""
        for v in views:
            for w in views:
                if v.src is w.src:
                    continue
                obstacle = self._meets(v.src, w.src)
                if obstacle is not None:
                    self.refusals.append(
                        Refusal(where(node), f"its branches from {w.src.name} do not stay linear: {obstacle}")
                    )
                    return

    def _meets(self, start: fx.Node, target: fx.Node) -> str | None:
        """Walk up from ``start`` through single-input ops; at ``target``, say why ``start`` stopped a branch."""
        cur = start
        for _ in range(_WALK_LIMIT):
            inputs = [n for n in cur.all_input_nodes if not self.classifier.consts.is_const(n) and self.ndim(n)]
            if len(inputs) != 1:
                return None
            cur = inputs[0]
            if cur is target:
                return self._why_stops(start)
        return None

    def _why_stops(self, node: fx.Node) -> str:
        if len(node.users) > 1:
            others = ", ".join(u.name for u in node.users)
            return f"{node.name} is used by several nodes ({others}), so it cannot be folded away"
        if node in self.stops:
            return f"{node.name}: {self.stops[node]}"
        user = next(iter(node.users), None)
        if user in self.stops:
            return f"{user.name} does not merge with {node.name}: {self.stops[user]}"
        return f"{node.name} is not linear"


def find_chains(
    gm: fx.GraphModule, consts: Constants, classifier: type[Classifier] = Classifier
) -> tuple[list[tuple[fx.Node, Branch]], list[Refusal]]:
    """Every chain end (node, branch) in graph order, and the refused branch sets (and batch-statistics BNs)."""
    walk = _Walk(classifier(gm, consts))
    for node in gm.graph.nodes:
        if node.op not in _CALLS or consts.is_const(node) or walk.ndim(node) != 4:
            continue
        op = walk.classifier.classify(node)
        if isinstance(op, Linear) and walk.ndim(op.input) == 4:
            walk.linear(node, op)
        elif isinstance(op, Sum) and all(walk.ndim(x) == 4 for x, _ in op.terms):
            walk.sum(node, op)
        elif isinstance(op, Opaque):
            walk.stops[node] = f"{op.reason} (not exact)" if op.inexact else op.reason
            if op.report:
                walk.refusals.append(Refusal(where(node), op.reason))
    ends = [(n, b) for n, b in walk.val.items() if n not in walk.absorbed]
    return ends, walk.refusals


def rewrite_chain(gm: fx.GraphModule, end: fx.Node, branch: Branch, src: fx.Node) -> fx.Node | None:
    """Replace the chain ending at ``end`` by one conv reading ``src`` if that removes nodes.

    Returns the new conv's node, or None when the chain is left as it is (nothing to gain).
    """
    if branch.form.identity:
        return None
    module = branch.form.to_module()
    dead = _dead_after(branch.members, src)
    removed = sum(1 for n in dead if n.op in _CALLS)
    added = 2 if isinstance(module, nn.Sequential) else 1
    if removed <= added:
        return None
    if not any(convs_in(gm, n) for n in dead):
        raise GrowsGraph("merging would add a convolution where the source has none")
    # A sum of branches takes the largest branch's kernel (the re-parameterization itself); a chain of convs
    # or a concatenation can instead multiply weights: a 1x1 projection into a wider 1x1, kernels of
    # different sizes concatenated. Those merges must not raise the weights (MACs per output pixel).
    before, after = sum(conv_weights(gm, n) for n in dead), branch.form.kb.kernel.numel()
    if (branch.concats or not branch.sets) and after > before:
        raise GrowsGraph(f"merging would grow the convolution weights from {before} to {after} (more MACs)")
    name = _free_name(gm, _common_prefix(dead))
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(end):
        new = gm.graph.call_module(name, (src,))
    new.meta = dict(end.meta)
    end.replace_all_uses_with(new)
    attrs = [n.target for n in dead if n.op == "get_attr"]
    for n in reversed(list(gm.graph.nodes)):
        if n in dead:
            gm.graph.erase_node(n)
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in attrs:
        if target not in used:
            _drop_attr(gm, target)
    return new


def _dead_after(members: list[fx.Node], src: fx.Node) -> set[fx.Node]:
    """The members plus every ancestor but ``src`` used only by dead nodes (constant kernels, shape arithmetic)."""
    dead = set(members)
    frontier = list(members)
    while frontier:
        node = frontier.pop()
        for inp in node.all_input_nodes:
            if inp in dead or inp is src or inp.op in ("placeholder", "output"):
                continue
            if all(u in dead for u in inp.users):
                dead.add(inp)
                frontier.append(inp)
    return dead


def _common_prefix(nodes: set[fx.Node]) -> str:
    paths = [n.target.split(".")[:-1] for n in nodes if n.op in ("call_module", "get_attr")]
    if not paths:
        return ""
    prefix = paths[0]
    for p in paths[1:]:
        i = 0
        while i < min(len(prefix), len(p)) and prefix[i] == p[i]:
            i += 1
        prefix = prefix[:i]
    return ".".join(prefix)


def _free_name(gm: fx.GraphModule, prefix: str) -> str:
    base = f"{prefix}.reparam_conv" if prefix else "reparam_conv"
    name, i = base, 1
    while _has_attr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _has_attr(gm: nn.Module, target: str) -> bool:
    obj = gm
    for part in target.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _drop_attr(gm: nn.Module, target: str) -> None:
    *path, last = target.split(".")
    owner = gm
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return
    if isinstance(owner, nn.Module) and hasattr(owner, last) and not isinstance(getattr(owner, last), nn.Module):
        delattr(owner, last)
