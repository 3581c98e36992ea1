"""Per-kernel latency regressors fitted on a device's own measurements, and predictions from them.

Model: a graph's latency is a per-run cost (a constant plus a cost per element of the graph's inputs and outputs,
which are copied once per run) plus, for each costed layer (``graph_cost``: fusions already applied, so a fused
ReLU or BatchNorm costs nothing), ``a_k + b_k * work + c_k * bytes + d_k * positions``, where ``k`` is the
layer's kernel (``depthwise5x5s2``, ``act:hardswish``, ``copy:concat``, ``reorder``, ``requant``...), ``work`` its
MACs (elements for non-MAC ops; what the runtime computes when it pads channels, ``LayerCost.work``), ``bytes`` its
activation + weight traffic and ``positions`` (convolutions only) its output pixels times groups. The suite models
hold one to a few layers each, so all coefficients are fitted together, by non-negative least squares on relative
error, per (precision, threads). A kernel the suite never timed is predicted with the kernel of its kind whose name
is closest, then with the most samples, and the prediction says so.

A table fitted on onnxruntime with its fp32 blocked layout (``nchwc_block`` > 0, ``ort_layout``) sees every fp32
ONNX graph - suite model or user's - as onnxruntime runs it: convs outside the layout are kernels of their own
(``..._nchw``), the layout conversions are layers (kernel ``reorder``) and padded channels are
work.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError
from .graph_cost import GraphCost, LayerCost
from .ort_layout import nchwc_layout

FEATURES = ("const_us", "us_per_mwork", "us_per_mb", "us_per_kpos")
N = len(FEATURES)


@dataclass(frozen=True)
class KernelFit:
    kernel: str
    kind: str
    const_us: float
    us_per_mwork: float
    us_per_mb: float
    us_per_kpos: float
    samples: int

    def us(self, layer: LayerCost) -> float:
        return float(np.dot((self.const_us, self.us_per_mwork, self.us_per_mb, self.us_per_kpos), _units(layer)))


@dataclass
class KernelTable:
    """The regressors of one (precision, threads) setting, with the fit's own error on the suite."""

    precision: str
    threads: int
    call_us: float
    io_us_per_melem: float
    kernels: dict[str, KernelFit]
    models: int
    median_abs_error: float
    nchwc_block: int = 0
    """onnxruntime's fp32 NCHWc block on the device (0: none, or not onnxruntime)."""

    def fit_for(self, layer: LayerCost) -> tuple[KernelFit | None, bool]:
        """The layer's regressor and whether it is a fallback: a kernel of the same kind, the closest name first
        (``gconv3x3s1w32`` -> ``gconv3x3s1w16`` before ``conv3x3s1``), then the most samples."""
        if layer.kernel in self.kernels:
            return self.kernels[layer.kernel], False
        same = [f for f in self.kernels.values() if f.kind == layer.kind]
        if not same:
            return None, True
        return max(same, key=lambda f: (len(os.path.commonprefix([f.kernel, layer.kernel])), f.samples)), True


@dataclass
class TablePrediction:
    ms: float
    layers: list[tuple[LayerCost, float]]
    notes: list[str] = field(default_factory=list)
    partial: bool = False


ROBUST_ROUNDS = 4
HUBER = 3.0
"""Relative errors beyond this many times the median are down-weighted (Huber loss, iteratively reweighted)."""


def _units(layer: LayerCost) -> tuple[float, float, float, float]:
    """The layer's amounts in the units of ``FEATURES``: one launch, M work, MB, thousand positions."""
    return 1.0, (layer.work or layer.macs or layer.elements) / 1e6, layer.bytes / 1e6, layer.positions / 1e3


GLOBAL = 2
"""Per-run columns before the kernels': the constant and the input/output elements (millions)."""


def _rows(cost: GraphCost, keys: dict[str, int]) -> np.ndarray:
    x = np.zeros(GLOBAL + N * len(keys))
    x[:GLOBAL] = 1.0, cost.io_elements / 1e6
    for layer in cost.costed:
        j = keys[layer.kernel]
        x[GLOBAL + N * j:GLOBAL + N * (j + 1)] += _units(layer)
    return x


def fit_table(samples: list[tuple[GraphCost, float]], precision: str, threads: int,
              nchwc_block: int = 0) -> KernelTable:
    """Fit every kernel's (const, per-work, per-byte, per-position) microseconds on (suite model cost, measured ms)
    pairs: non-negative least squares on relative error, reweighted so that the few models far off the law
    (a tensor beyond the last-level cache, a shape the runtime treats specially) do not bend every kernel."""
    from .predict import _nnls

    samples = [(nchwc_layout(cost, nchwc_block), ms) for cost, ms in samples]
    if len(samples) < 3:
        raise BadInputError(f"only {len(samples)} {precision} suite timings at {threads} thread(s): too few to "
                            "fit; give a larger --budget")
    kinds: dict[str, str] = {}
    counts: dict[str, int] = {}
    for cost, _ in samples:
        for layer in cost.costed:
            kinds.setdefault(layer.kernel, layer.kind)
            counts[layer.kernel] = counts.get(layer.kernel, 0) + 1
    keys = {k: i for i, k in enumerate(sorted(kinds))}
    a = np.array([_rows(cost, keys) for cost, _ in samples])
    y = np.array([ms * 1e3 for _, ms in samples])  # microseconds
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    weight = np.ones(len(y))
    for _ in range(ROBUST_ROUNDS):
        w = _nnls((a / scale) / y[:, None] * weight[:, None], weight) / scale
        rel = np.abs(a @ w / y - 1)
        weight = 1 / np.maximum(1, rel / (HUBER * np.median(rel) + 1e-9))  # Huber: linear beyond the threshold
    err = float(np.median(rel))
    fits = {k: KernelFit(k, kinds[k], *(float(v) for v in w[GLOBAL + N * i:GLOBAL + N * (i + 1)]), counts[k])
            for k, i in keys.items()}
    return KernelTable(precision, threads, float(w[0]), float(w[1]), fits, len(samples), round(err, 4),
                       nchwc_block)


def predict_table(cost: GraphCost, table: KernelTable) -> TablePrediction:
    """Latency of ``cost`` from the table: per-call cost plus each costed layer's regressor."""
    cost = nchwc_layout(cost, table.nchwc_block)
    per_layer, fallback, missing = [], set(), []
    for layer in cost.costed:
        fit, is_fallback = table.fit_for(layer)
        if fit is None:
            missing.append(f"{layer.name} ({layer.kernel})")
            continue
        if is_fallback:
            fallback.add(f"{layer.kernel} -> {fit.kernel}")
        per_layer.append((layer, fit.us(layer) / 1e3))
    notes = []
    if fallback:
        notes.append("kernels the suite did not time, predicted with a kernel of the same kind: "
                     + ", ".join(sorted(fallback)))
    if missing or cost.partial:
        notes.append("PARTIAL: no regressor for " + ", ".join((missing + cost.uncosted)[:5]))
    ms = (table.call_us + table.io_us_per_melem * cost.io_elements / 1e6) / 1e3 + sum(t for _, t in per_layer)
    return TablePrediction(ms, per_layer, notes, bool(missing) or cost.partial)


def table_to_rows(table: KernelTable) -> list[dict]:
    return [{"precision": table.precision, "threads": table.threads, "kernel": f.kernel, "kind": f.kind,
             **{k: round(getattr(f, k), 6) for k in FEATURES}, "samples": f.samples}
            for f in table.kernels.values()]


def table_from_rows(fit: dict, rows: list[dict]) -> KernelTable:
    """A KernelTable from the device file's ``[[fits]]`` row and its ``[[kernels]]`` rows (ValueError if bad)."""
    precision, threads = str(fit["precision"]), int(fit["threads"])
    kernels = {}
    for r in rows:
        if r["precision"] != precision or int(r["threads"]) != threads:
            continue
        values = [float(r[k]) for k in FEATURES]
        if any(v < 0 or not math.isfinite(v) for v in values):
            raise ValueError(f"kernel {r['kernel']}: coefficients must be finite and >= 0")
        kernels[str(r["kernel"])] = KernelFit(str(r["kernel"]), str(r["kind"]), *values, int(r["samples"]))
    if not kernels:
        raise ValueError(f"no kernels for {precision} at {threads} thread(s)")
    call, io = float(fit["call_us"]), float(fit["io_us_per_melem"])
    if any(v < 0 or not math.isfinite(v) for v in (call, io)):
        raise ValueError("call_us and io_us_per_melem must be finite and >= 0")
    block = int(fit.get("nchwc_block", 0))
    if block < 0:
        raise ValueError("nchwc_block must be >= 0")
    return KernelTable(precision, threads, call, io, kernels, int(fit["models"]), float(fit["median_abs_error"]),
                       block)
