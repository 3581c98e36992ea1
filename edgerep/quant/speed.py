"""Is the int8 artifact faster than the fp32 one on this machine? Measured, never assumed.

int8 speed depends on the CPU (VNNI or not) and on the graph form (``bench/int8_speed.py``): on an AVX2 x86 host
an int8 RepGhostNet ran at half the speed of fp32. ``edgerep export`` times both artifacts of a target here with
its own runtime (1 thread, interleaved rounds, medians) and says when int8 is not faster.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def int8_speedup(fp32: Path, int8: Path, *, rounds: int = 5, per_round: int = 5, warmup: int = 2) -> Speedup | None:
    """Median latency (1 thread, batch as exported) of both artifacts, interleaved; None for untimed formats."""
    if fp32.suffix not in TIMED_SUFFIXES or int8.suffix != fp32.suffix:
        return None
    runners = [_runner(fp32), _runner(int8)]
    times: list[list[float]] = [[], []]
    for run in runners:
        for _ in range(warmup):
            run()
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            for _ in range(per_round):
                t0 = time.perf_counter()
                runners[i]()
                times[i].append((time.perf_counter() - t0) * 1e3)
    return Speedup(statistics.median(times[0]), statistics.median(times[1]))


def _runner(path: Path) -> Callable[[], object]:
    rng = np.random.default_rng(0)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        x = rng.standard_normal([d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]).astype(np.float32)
        return lambda: session.run(None, {inp.name: x})
    from ai_edge_litert import interpreter as lib

    interp = lib.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    dtype = np.dtype(detail["dtype"])
    interp.set_tensor(detail["index"], (rng.standard_normal(detail["shape"]) * (50 if dtype.kind == "i" else 1))
                      .astype(dtype))
    return interp.invoke


def speed_lines(artifacts: dict[tuple[str, str], Path]) -> tuple[list[str], list[str]]:
    """For ``{(target, precision): artifact}``: one line per target with fp32 and int8, and warnings when int8 is not faster."""
    lines, warnings = [], []
    for target in sorted({t for t, _ in artifacts}):
        fp32, int8 = artifacts.get((target, "fp32")), artifacts.get((target, "int8"))
        if fp32 is None or int8 is None:
            continue
        s = int8_speedup(fp32, int8)
        if s is None:
            continue
        lines.append(f"{target}: int8 {s.int8_ms:.3g} ms vs fp32 {s.fp32_ms:.3g} ms -> {s.ratio:.2f}x")
        if s.ratio <= 1.0:
            warnings.append(f"{target} int8 is not faster than fp32 on this host ({s.ratio:.2f}x, 1 thread): ship fp32"
                            " here, or measure on the device that will run it (edgerep profile --device)")
    return lines, warnings
