"""Latency *prediction* for a device profile: a roofline per layer, efficiencies fitted on published latencies.

Model (per layer l of kind k, on the cores a ``threads``-thread run uses, in the graph's compute precision):

    t_l = max(work_l / P, bytes_l / BW) / e_k  +  c / f

``work`` is MACs (elements for pools and elementwise ops), ``P`` the peak MAC/s of the used cores (sum over
cores of GHz x MACs/cycle from the profile), ``BW`` the memory bandwidth, ``e_k`` a fitted efficiency per op
kind (conv, pointwise, depthwise, fc, other) and ``c`` a fitted per-op overhead in cycles of the fastest used
core (clock ``f``): small models run far below peak because of it. The model is linear in ``1/e_k`` and ``c``,
so it is fitted by non-negative least squares on relative errors.

Few phones have enough published points to fit six parameters alone, so the efficiencies are fitted on the
calibration points of *every* profile (one fit per precision, kernel efficiency relative to peak being a
property of the runtime more than of the phone), then each profile with points of its own gets a scale factor
(geometric mean of its residuals, shrunk towards 1 by n/(n+1)). A profile without points (pixel7, rpi5, ...)
is predicted from the pooled fit and its spec sheet only, and says so. Every prediction carries the
leave-one-out error: each calibration point predicted by a fit that never saw it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from ..errors import BadInputError
from .graph_cost import COSTED_KINDS, GraphCost, LayerCost
from .profiles import HOST, Calibration, Profile, all_profiles
from .reference_models import reference_cost

GROUPS = ("conv", "pointwise", "depthwise", "fc", "other")
PRIOR_EFFICIENCY = {"conv": 0.5, "pointwise": 0.5, "depthwise": 0.25, "fc": 0.3, "other": 0.2}
PRIOR_OVERHEAD_CYCLES = 10_000.0
RIDGE = 0.05
"""Weight of the pull towards the priors: keeps kinds a calibration set barely exercises (fc) at sane values."""


def _group(kind: str) -> str:
    return kind if kind in GROUPS else "other"


@dataclass(frozen=True)
class Fit:
    """Fitted inverse efficiencies per kind group, per-op overhead (cycles), and per-profile scale factors."""

    precision: str
    inv_efficiency: dict[str, float]
    overhead_cycles: float
    scale: dict[str, float]
    points: int

    def to_dict(self) -> dict:
        return {"precision": self.precision, "points": self.points, "overhead_cycles": round(self.overhead_cycles),
                "efficiency": {k: round(1 / v, 3) if v > 0 else None for k, v in self.inv_efficiency.items()},
                "profile_scale": {k: round(v, 3) for k, v in self.scale.items()}}


@dataclass
class Prediction:
    """A *predicted* latency, never a measurement: ``label`` says so in every output."""

    device: str
    threads: int
    precision: str
    ms: float
    layers: list[tuple[LayerCost, float]]
    loo: dict
    fit: Fit
    basis: str
    label: str = "predicted"
    notes: list[str] = field(default_factory=list)

    def top_layers(self, n: int = 10) -> list[tuple[LayerCost, float]]:
        return sorted(self.layers, key=lambda lt: -lt[1])[:n]

    def to_dict(self, layers: int = 0) -> dict:
        return {
            "label": self.label, "device": self.device, "threads": self.threads, "precision": self.precision,
            "latency_ms": round(self.ms, 3), "basis": self.basis, "leave_one_out": self.loo,
            "fit": self.fit.to_dict(), "notes": self.notes,
            "layers": [{"name": lc.name, "op": lc.op, "kind": lc.kind, "macs": lc.macs, "bytes": lc.bytes,
                        "ms": round(ms, 4)} for lc, ms in self.top_layers(layers)],
        }


def features(cost: GraphCost, profile: Profile, threads: int, precision: str | None = None) -> np.ndarray:
    """Per-layer feature rows [roofline seconds at peak, one column per kind group] + [1/f] for the overhead."""
    precision = precision or cost.precision
    if profile.bandwidth_gbs <= 0:
        raise BadInputError(f"device {profile.name} has no memory bandwidth to predict with; measure it instead")
    peak = profile.peak_macs(threads, precision)
    bw = profile.bandwidth_gbs * 1e9
    fastest = max(c.ghz for c in profile.used_cores(threads)) * 1e9
    rows = []
    for layer in cost.layers:
        if layer.kind not in COSTED_KINDS:
            continue
        row = np.zeros(len(GROUPS) + 1)
        row[GROUPS.index(_group(layer.kind))] = max((layer.macs or layer.elements) / peak, layer.bytes / bw)
        row[-1] = 1.0 / fastest
        rows.append(row)
    return np.array(rows).reshape(-1, len(GROUPS) + 1)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares by an active-set loop (drop the most negative coefficient, refit)."""
    active = np.ones(a.shape[1], bool)
    while True:
        x = np.zeros(a.shape[1])
        x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        if (x >= 0).all():
            return x
        active[np.argmin(x)] = False


def _points(profiles: list[Profile], precision: str) -> list[tuple[Profile, Calibration]]:
    return [(p, c) for p in profiles for c in p.calibration if c.precision == precision]


def fit(points: list[tuple[Profile, Calibration]], precision: str) -> Fit:
    """Fit efficiencies and overhead on ``points`` (relative error, ridge towards the priors), then profile scales."""
    prior = np.array([1 / PRIOR_EFFICIENCY[g] for g in GROUPS] + [PRIOR_OVERHEAD_CYCLES])
    rows, targets = [], []
    for profile, c in points:
        x = features(_reference(c.model, precision), profile, c.threads).sum(axis=0)
        rows.append(x * 1e3 / c.ms)  # relative error: predicted / measured - 1
        targets.append(1.0)
    # ridge rows in units of each parameter's prior: RIDGE * (w / prior - 1)
    a = np.vstack([np.array(rows).reshape(-1, len(prior)), RIDGE * np.diag(1 / prior)])
    b = np.concatenate([targets, RIDGE * np.ones(len(prior))])
    w = _nnls(a, b)
    inv = dict(zip(GROUPS, w[:-1].tolist()))
    base = Fit(precision, inv, float(w[-1]), {}, len(points))
    residuals: dict[str, list[float]] = {}
    for profile, c in points:
        residuals.setdefault(profile.name, []).append(math.log(c.ms / _total_ms(base, c.model, profile, c.threads)))
    scale = {n: math.exp(sum(r) / (len(r) + 1)) for n, r in residuals.items()}
    return Fit(precision, inv, float(w[-1]), scale, len(points))


def _total_ms(f: Fit, model: str, profile: Profile, threads: int) -> float:
    x = features(_reference(model, f.precision), profile, threads)
    return float(x.sum(axis=0) @ _weights(f)) * 1e3 * f.scale.get(profile.name, 1.0)


def _weights(f: Fit) -> np.ndarray:
    return np.array([f.inv_efficiency[g] for g in GROUPS] + [f.overhead_cycles])


@cache
def _reference(model: str, precision: str) -> GraphCost:
    return reference_cost(model, precision)


@cache
def pooled_fit(precision: str) -> Fit:
    return fit(_points(all_profiles(), precision), precision)


@cache
def calibrated_macs(precision: str) -> tuple[int, int]:
    """Smallest and largest MACs among the calibration networks of ``precision``: beyond them is extrapolation."""
    macs = [_reference(c.model, precision).macs for _, c in _points(all_profiles(), precision)]
    return min(macs), max(macs)


@cache
def leave_one_out(precision: str) -> list[dict]:
    """Every calibration point of ``precision`` predicted by a fit without it: the predictor's honest error."""
    points = _points(all_profiles(), precision)
    out = []
    for i, (profile, c) in enumerate(points):
        f = fit(points[:i] + points[i + 1:], precision)
        pred = _total_ms(f, c.model, profile, c.threads)
        out.append({"device": profile.name, "model": c.model, "threads": c.threads, "measured_ms": c.ms,
                    "predicted_ms": round(pred, 2), "error": round(pred / c.ms - 1, 3), "source": c.source})
    return out


FLAG_ERROR = 0.25
"""Expected |error| above which an output flags a predicted number as unreliable."""


def family(model: str) -> str:
    """Architecture family of a reference model name: ``mobilenet_v3_large_1.0_224`` -> ``mobilenet_v3``."""
    parts = model.split("_")
    return "_".join(parts[:2]) if parts[0] == "mobilenet" else parts[0].rstrip("0123456789")


@cache
def leave_one_family_out(precision: str) -> list[dict]:
    """Every calibration point predicted by a fit that saw no network of its *family*: the error a user gets on
    an architecture the published points do not cover (leave-one-out inside a family promises more)."""
    points = _points(all_profiles(), precision)
    out = []
    for fam in sorted({family(c.model) for _, c in points}):
        rest = [(p, c) for p, c in points if family(c.model) != fam]
        if not rest:
            continue
        f = fit(rest, precision)
        for profile, c in points:
            if family(c.model) == fam:
                pred = _total_ms(f, c.model, profile, c.threads)
                out.append({"device": profile.name, "model": c.model, "family": fam, "threads": c.threads,
                            "measured_ms": c.ms, "predicted_ms": round(pred, 2), "error": round(pred / c.ms - 1, 3),
                            "source": c.source})
    return out


def lofo_summary(device: str, precision: str) -> dict:
    """Mean / max |error| of the leave-one-family-out predictions on ``device``'s points (else on all points),
    and whether it exceeds ``FLAG_ERROR``."""
    rows = leave_one_family_out(precision)
    own = [r for r in rows if r["device"] == device]
    use = own or rows
    errs = [abs(r["error"]) for r in use]
    mean = round(sum(errs) / len(errs), 3) if errs else None
    return {"scope": f"{device}'s own points" if own else "all profiles' points (this device has none)",
            "points": len(use), "mean_abs_error": mean, "max_abs_error": round(max(errs), 3) if errs else None,
            "unreliable": mean is None or mean > FLAG_ERROR, "rows": use}


def loo_summary(device: str, precision: str) -> dict:
    """Mean and max |error| of the leave-one-out predictions on ``device``'s own points, else of all points."""
    rows = leave_one_out(precision)
    own = [r for r in rows if r["device"] == device]
    use = own or rows
    errs = [abs(r["error"]) for r in use]
    return {
        "scope": f"{device}'s own calibration points" if own else "all profiles' points (this device has none)",
        "points": len(use), "mean_abs_error": round(sum(errs) / len(errs), 3) if errs else None,
        "max_abs_error": round(max(errs), 3) if errs else None, "rows": use,
    }


def predict(cost: GraphCost, profile: Profile, threads: int = 1, precision: str | None = None) -> Prediction:
    """Predicted latency of ``cost`` on ``profile`` with ``threads`` threads on its fastest cores."""
    if profile.name == HOST:
        raise BadInputError("the host is measured, not predicted: use edgerep.profile.host.profile_artifact")
    computes = precision or cost.precision
    precision = "int8" if computes == "int8" else "fp32"  # no published fp16 CPU latency to fit: fp32's fit, peak
    f = pooled_fit(precision)
    x = features(cost, profile, threads, precision)
    scale = f.scale.get(profile.name, 1.0)
    per_layer = (x @ _weights(f)) * 1e3 * scale
    costed = [layer for layer in cost.layers if layer.kind in COSTED_KINDS]
    own = [c for c in profile.calibration if c.precision == precision]
    basis = (f"pooled fit on {f.points} {precision} calibration points of all profiles, scaled by {profile.name}'s "
             f"own {len(own)} (x{scale:.2f})" if own else
             f"pooled fit on {f.points} {precision} calibration points of other profiles and {profile.name}'s spec "
             "sheet only: no published measurement of this device is calibrated")
    notes = list(cost.notes)
    if computes != precision:
        notes.append(f"{computes} graph predicted with the fp32 fit and fp32 peak (no {computes} calibration points); "
                     "a CPU with fp16 arithmetic may run it faster")
    if any(c.estimate for c in profile.used_cores(threads)):
        notes.append("per-cycle throughput of the used cores is an estimate (see the profile's sources)")
    lo, hi = calibrated_macs(precision)
    if not lo <= cost.macs <= hi:
        notes.append(f"{cost.macs / 1e6:.3g}M MACs is outside the calibrated range ({lo / 1e6:.3g}M-{hi / 1e6:.3g}M): "
                     "extrapolated; for small inputs the fitted per-op overhead dominates and may overstate latency")
    if cost.input_shape and cost.input_shape[0] != 1:
        notes.append(f"input batch {cost.input_shape[0]}: published calibration points are batch 1")
    lofo = lofo_summary(profile.name, precision)
    if lofo["unreliable"]:
        notes.append(f"UNRELIABLE: expected error on an architecture family the fit never saw is "
                     f"{lofo['mean_abs_error']:.0%} (> {FLAG_ERROR:.0%}); calibrate the device (edgerep calibrate)")
    if cost.partial:
        notes.append("PARTIAL: ops of unknown cost are left out: " + ", ".join(cost.uncosted[:5]))
    loo = {**loo_summary(profile.name, precision), "leave_one_family_out": {k: v for k, v in lofo.items()
                                                                             if k != "rows"}}
    return Prediction(profile.name, threads, computes, float(per_layer.sum()), list(zip(costed, per_layer.tolist())),
                      loo, f, basis, notes=notes)
