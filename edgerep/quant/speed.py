"""Is the int8 artifact faster than the fp32 one on this machine? Measured, never assumed.

int8 speed depends on the CPU (VNNI or not) and on the graph form (``bench/int8_speed.py``): on an AVX2 x86 host
an int8 RepGhostNet ran at half the speed of fp32. ``edgerep export`` times every artifact it wrote with its own
runtime here (1 thread, interleaved rounds, medians of the thread's CPU time), says when int8 is not faster, and
which artifact is the fastest here.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..proof.metrics import interleaved_times

TIMED_SUFFIXES = (".onnx", ".tflite")  # runtimes that run here; Core ML / ExecuTorch speed is not judged on x86


@dataclass(frozen=True)
class Speedup:
    fp32_ms: float
    int8_ms: float

    @property
    def ratio(self) -> float:
        return self.fp32_ms / self.int8_ms

    def to_dict(self) -> dict:
        return {"fp32_ms": round(self.fp32_ms, 3), "int8_ms": round(self.int8_ms, 3), "speedup": round(self.ratio, 3)}


def median_latencies(artifacts: dict[tuple[str, str], Path], *, rounds: int = 5, per_round: int = 5,
                     warmup: int = 2) -> dict[tuple[str, str], float]:
    """Median latency (ms, 1 thread, batch as exported) of every artifact timed here, all in one interleaved run.

    One run for all, so that ratios between targets are as meaningful as ratios within one. Measured as the
    thread's CPU time: both runtimes compute on the calling thread at one thread, and a loaded machine (a CI
    runner, a laptop building something) then still gives the ratio of the work itself. Core ML / ExecuTorch
    artifacts are left out (no runtime for them on this x86 host).
    """
    samples = thread_cpu_samples(artifacts, rounds=rounds, per_round=per_round, warmup=warmup)
    return {key: statistics.median(v) for key, v in samples.items()}


def thread_cpu_samples(artifacts: dict, *, rounds: int, per_round: int, warmup: int) -> dict:
    """Every .onnx / .tflite artifact's run times (ms, 1 thread, thread CPU clock), interleaved in one run."""
    calls = {key: _runner(Path(path)) for key, path in artifacts.items() if Path(path).suffix in TIMED_SUFFIXES}
    return interleaved_times(calls, rounds=rounds, per_round=per_round, warmup=warmup, clock="thread-cpu")


def _runner(path: Path) -> Callable[[], object]:
    """One call of the artifact on one thread, as ``edgerep profile`` runs it."""
    from ..profile.host import runner

    return runner(str(path), 1)[1]


@dataclass(frozen=True)
class SpeedReport:
    """Latencies of the artifacts timed here; which one to ship, and where int8 is not faster than fp32.

    Shipping an int8 file that is slower than the fp32 one is the mistake this prevents, so every target whose
    int8 is not faster gets a warning naming the fastest artifact instead.
    """

    medians_ms: dict[tuple[str, str], float]

    @property
    def speedups(self) -> dict[str, Speedup]:
        m = self.medians_ms
        return {t: Speedup(m[(t, "fp32")], m[(t, "int8")]) for t in sorted({t for t, _ in m})
                if (t, "fp32") in m and (t, "int8") in m}

    @property
    def fastest(self) -> tuple[str, str] | None:
        return min(self.medians_ms, key=self.medians_ms.get) if self.medians_ms else None

    def lines(self) -> list[str]:
        """One line per target timed in both precisions, then the fastest artifact (nothing without a pair)."""
        out = [f"{t}: int8 {s.int8_ms:.3g} ms vs fp32 {s.fp32_ms:.3g} ms -> {s.ratio:.2f}x"
               for t, s in self.speedups.items()]
        if out and self.fastest:
            out.append(f"fastest here: {' '.join(self.fastest)} ({self.medians_ms[self.fastest]:.3g} ms)")
        return out

    def warnings(self) -> list[str]:
        ship = " ".join(self.fastest or ())
        return [f"{t} int8 is not faster than fp32 on this host ({s.ratio:.2f}x, 1 thread): ship {ship} here, or"
                " measure on the device that will run it (edgerep profile --device)"
                for t, s in self.speedups.items() if s.ratio <= 1.0]

    def to_dict(self) -> dict:
        return {"threads": 1, "median_ms": {f"{t} {p}": round(v, 4) for (t, p), v in self.medians_ms.items()},
                "int8_speedup": {t: s.to_dict() for t, s in self.speedups.items()},
                "fastest": " ".join(self.fastest) if self.fastest else None}


def speed_report(artifacts: dict[tuple[str, str], Path]) -> SpeedReport:
    """Time ``{(target, precision): artifact}`` here, when some target has both an fp32 and an int8 artifact."""
    pairs = {t for t, p in artifacts if p == "int8" and (t, "fp32") in artifacts}
    return SpeedReport(median_latencies(artifacts) if pairs else {})
