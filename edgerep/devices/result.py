"""What a device run returns: timings with their spread, per-op times, outputs, and partial results on failure.

Plain dataclasses with ``to_dict()`` so ``edgerep profile --device`` and ``edgerep bench`` can print, store and
compare them without knowing which transport (ssh, adb, emulation) produced them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import BadInputError


@dataclass
class Timing:
    """Latency in ms. A source that reports no raw runs (benchmark_model) leaves ``runs_ms`` empty and fills
    what it prints; fields it does not give (e.g. p90) stay None rather than being guessed."""

    runs_ms: list[float] = field(default_factory=list)
    median_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    first_ms: float | None = None
    init_ms: float | None = None
    count: int = 0

    @classmethod
    def from_runs(cls, runs_ms: list[float], first_ms: float | None = None, init_ms: float | None = None) -> "Timing":
        runs = [float(r) for r in runs_ms]
        if not runs:
            return cls(first_ms=first_ms, init_ms=init_ms)
        ordered = sorted(runs)
        return cls(
            runs, statistics.median(runs), _percentile(ordered, 0.9), statistics.fmean(runs),
            statistics.stdev(runs) if len(runs) > 1 else 0.0, ordered[0], ordered[-1], first_ms, init_ms, len(runs),
        )

    @property
    def spread_ms(self) -> float | None:
        """p90 - median when raw runs exist, else the reported standard deviation."""
        if self.p90_ms is not None and self.median_ms is not None:
            return self.p90_ms - self.median_ms
        return self.std_ms


@dataclass
class OpTime:
    """One op of a runtime's profile: average ms per inference."""

    name: str
    op: str
    avg_ms: float
    calls: int = 1


@dataclass
class DeviceResult:
    """One artifact measured on one device. ``partial`` is True when the run stopped early (``error`` says why)."""

    device: str
    artifact: str
    runtime: str
    threads: int
    timing: Timing
    ops: list[OpTime] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    outputs: np.ndarray | None = None
    partial: bool = False
    error: str | None = None
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outputs"] = None if self.outputs is None else self.outputs.tolist()
        d["timing"]["spread_ms"] = self.timing.spread_ms
        return d


class DeviceError(BadInputError):
    """A device run failed; the message is one line, ``result`` keeps what was measured before the failure."""

    def __init__(self, message: str, result: DeviceResult | dict | None = None) -> None:
        super().__init__(message)
        self.result = result


def check_runner_result(stdout: str, stderr: str, returncode: int, where: str) -> dict:
    """The JSON line ``remote_runner.py`` printed; a failed run raises ``DeviceError`` carrying its partial JSON."""
    result = None
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if result is None:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {returncode}, no output"
        raise DeviceError(f"{where}: the runner produced no result ({reason})")
    if not result.get("ok"):
        err = result.get("error") or {"kind": "run-failed", "message": f"exit code {returncode}"}
        raise DeviceError(f"{where}: {err['kind']}: {' '.join(str(err['message']).split())}", result)
    return result


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (numpy's default method)."""
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
