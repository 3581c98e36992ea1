"""Size and cost of a model: parameters, multiply-accumulates, graph nodes, and torch latency.

MACs count what dominates a CNN on a phone (convolutions and fully connected layers, per image);
elementwise ops and normalisation are left out, which is why a deploy form's MACs can be compared
with its train form's to see what fusion saved. Everything but latency also works on the ``meta``
device, so ``edgerep models`` sizes every zoo model without allocating or computing weights.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs", "count_nodes", "interleaved_times", "measure_latency"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """MACs of one forward pass on a single image of ``input_size`` (C, H, W).

    Counted at the aten level (convolutions and matrix products), so functional convs inside blocks
    (masked or refocused kernels) count too, not only ``nn.Conv2d`` modules.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    return counter.get_total_flops() // 2


def count_nodes(model: nn.Module) -> Counter[str] | None:
    """Operations of the traced graph by kind (module class or function name); None if untraceable.

    This is the "node count" a deploy form is judged by: a fused RepVGG must trace to exactly the
    plain VGG's convs and activations, with no BatchNorm and no add left.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow: the model is still valid, just not FX-traceable
        return None
    modules = dict(model.named_modules())
    kinds: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op == "call_module":
            kinds[type(modules[node.target]).__name__] += 1
        elif node.op in ("call_function", "call_method"):
            kinds[getattr(node.target, "__name__", str(node.target))] += 1
    return kinds


def interleaved_times(
    calls: dict[str, Callable[[], object]], *, rounds: int = 7, per_round: int = 3, warmup: int = 2,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Times (ms) of every call of each zero-argument callable, measured in interleaved rounds.

    Each callable is first called ``warmup`` times; then every round calls each one ``per_round`` times in
    turn (A, B, A, B, ...). Interleaving spreads this machine's noise over every callable alike, so ratios
    of statistics from one measurement are meaningful even when the absolute numbers drift. Any runtime
    fits (a torch model, an onnxruntime session, a LiteRT interpreter), which is why it takes callables.
    ``clock="thread-cpu"`` counts the calling thread's CPU time instead of wall time: for runtimes set to one
    thread (which then compute on the caller's thread) it ignores the time other processes hold the core.
    """
    now = {"wall": time.perf_counter, "thread-cpu": time.thread_time}[clock]
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(per_round):
                t0 = now()
                call()
                samples[name].append((now() - t0) * 1e3)
    return samples


@torch.no_grad()
def measure_latency(
    models: dict[str, nn.Module], x: Tensor, *, rounds: int = 7, per_round: int = 3, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (ms) of ``model(x)`` for each model, measured in interleaved rounds (``interleaved_times``)."""
    calls = {k: functools.partial(m, x) for k, m in models.items()}
    samples = interleaved_times(calls, rounds=rounds, per_round=per_round, warmup=warmup)
    return {k: statistics.median(v) for k, v in samples.items()}
