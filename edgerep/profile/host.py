"""Measured latency on this machine: any .onnx (onnxruntime) or .tflite (ai-edge-litert, XNNPACK) file, and a
PyTorch model for reference.

An artifact is timed in a fresh subprocess (``python -m edgerep.profile.host``) so that
- its peak memory is its own: the worker reads VmRSS after imports, then VmHWM after loading the model and
  running it (``/proc/self/clear_refs`` resets the high-water mark first where the kernel allows), so native
  allocations of the runtime count, which ``tracemalloc`` would miss;
- core pinning (``cores``) is set before any runtime creates its thread pool, so every worker thread inherits it;
- one runtime's thread pools cannot disturb another's.
Each thread count gets its own session / interpreter (the runtimes' intra-op thread setting), all timed in
interleaved rounds (``edgerep.proof.metrics.interleaved_times``) so machine noise spreads over every setting alike.
Core ML models cannot run here: Core ML executes only on macOS.
LiteRT exposes no per-op profiler to Python (its op profiling lives in the C++ ``benchmark_model`` tool), so
per-layer times are measured for ONNX only (onnxruntime's profiler, per node); for TFLite they can be predicted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInputError, require
from .cpu import describe_cpu

RUNTIMES = {".onnx": "onnxruntime", ".tflite": "litert"}


@dataclass(frozen=True)
class Timing:
    """Statistics of the wall times (ms) of one thread setting; ``spread`` = (p90 - p10) / median."""

    threads: int
    median_ms: float
    p90_ms: float
    p10_ms: float
    min_ms: float
    max_ms: float
    spread: float
    runs: int


@dataclass
class HostProfile:
    """A *measured* latency on this machine, with what it was measured on."""

    artifact: str
    runtime: str
    runtime_version: str
    input_shape: list[int]
    timings: list[Timing]
    peak_memory_mb: float | None
    cores: list[int] | None
    cpu: dict
    layers: list[dict] | None = None
    label: str = "measured"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "timings": [asdict(t) for t in self.timings]}


def summarize(threads: int, samples: list[float]) -> Timing:
    """Median, p90, p10, extremes and relative spread of ``samples`` (ms)."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    med = statistics.median(s)
    return Timing(threads, round(med, 4), round(q[8], 4), round(q[0], 4), round(s[0], 4), round(s[-1], 4),
                  round((q[8] - q[0]) / med, 3) if med else 0.0, len(s))


def profile_artifact(
    path: str | Path, threads: tuple[int, ...] = (1,), *, cores: list[int] | None = None, rounds: int = 7,
    per_round: int = 3, warmup: int = 3, layers: bool = False, timeout: float = 600.0,
) -> HostProfile:
    """Time ``path`` with its own runtime at each thread count; peak memory and per-layer times (ONNX) too."""
    path = Path(path)
    if path.suffix in (".mlpackage", ".mlmodel"):
        raise BadInputError(f"{path.name}: Core ML models run only on macOS, so cannot be measured here; predict it "
                            "for a device profile (--device iphone12pro) or profile the .onnx or .tflite artifact")
    if not path.is_file():
        raise BadInputError(f"artifact {path} does not exist; give an .onnx or .tflite file")
    if path.suffix not in RUNTIMES:
        raise BadInputError(f"{path}: cannot time a {path.suffix or 'suffix-less'} file; give .onnx or .tflite")
    threads = tuple(_check_threads(threads))
    if cores is not None:
        usable = os.sched_getaffinity(0)
        if not cores or not set(cores) <= usable:
            raise BadInputError(f"--cores {cores}: this process may use cores {sorted(usable)}; pick among them")
    require("onnxruntime" if path.suffix == ".onnx" else "ai_edge_litert.interpreter",
            "onnx" if path.suffix == ".onnx" else "tflite")
    job = {"path": str(path.resolve()), "threads": list(threads), "cores": cores, "rounds": rounds,
           "per_round": per_round, "warmup": warmup, "layers": layers}
    result = _run_worker(job, timeout, what=f"timing {path.name}")
    return HostProfile(
        artifact=str(path), runtime=result["runtime"], runtime_version=result["version"],
        input_shape=result["input_shape"],
        timings=[summarize(t, result["samples"][str(t)]) for t in threads],
        peak_memory_mb=result["peak_memory_mb"], cores=cores, cpu=describe_cpu(), layers=result.get("layers"),
        notes=result.get("notes", []),
    )


def time_many(paths: list[str | Path], threads: int, *, rounds: int = 5, per_round: int = 5, warmup: int = 3,
              timeout: float = 600.0) -> dict[str, float]:
    """Fastest time (ms) of each file at ``threads`` threads, timed in *one* worker subprocess with the runners of
    ``profile_artifact`` (a calibration times hundreds of tiny models: one process start each would dominate).

    The minimum, not the median: on a shared machine a kernel of a few ms is preempted in most rounds (medians
    measured here under load ran up to 10x the minimum), and the kernel's own cost is what a regressor should
    learn. At one thread the clock is the computing thread's CPU time (onnxruntime and LiteRT with one thread
    compute in the caller's thread), which preemption does not inflate at all."""
    _check_threads((threads,))
    job = {"paths": [str(Path(p).resolve()) for p in paths], "threads": [threads], "rounds": rounds,
           "per_round": per_round, "warmup": warmup}
    result = _run_worker(job, timeout, what="timing")
    return {Path(k).name: v for k, v in result["fastest"].items()}


def _run_worker(job: dict, timeout: float, what: str) -> dict:
    """Run ``job`` in a fresh worker process (this module's ``__main__``) and return its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "edgerep.profile.host"], input=json.dumps(job), text=True,
                          capture_output=True, timeout=timeout)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInputError(f"{what} crashed its runtime (exit {proc.returncode}): {tail}") from None
    if "error" in result:
        raise BadInputError(f"{what}: {result['error']}")
    return result


def _batch_worker(job: dict) -> dict:
    """Each file timed alone (its own session / interpreter), interleaved over rounds across the batch."""
    from ..proof.metrics import interleaved_times

    n = job["threads"][0]
    calls, keep = {}, []
    for path in job["paths"]:
        try:
            holder, call, _, _ = runner(path, n)
        except Exception as exc:
            return {"error": f"{Path(path).name}: the runtime cannot run it ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"}
        keep.append(holder)
        calls[path] = call
    if n == 1:  # one intra-op thread computes in this thread: its CPU time excludes other jobs' time slices
        return {"fastest": _thread_cpu_fastest(calls, job["rounds"], job["per_round"], job["warmup"])}
    samples = interleaved_times(calls, rounds=job["rounds"], per_round=job["per_round"], warmup=job["warmup"])
    return {"fastest": {p: min(v) for p, v in samples.items()}}


def _thread_cpu_fastest(calls: dict, rounds: int, per_round: int, warmup: int) -> dict[str, float]:
    """Fastest thread-CPU time (ms) of each call over interleaved rounds of ``per_round`` back-to-back calls (the
    same pattern as ``interleaved_times``: a model runs on caches it warmed itself, as it does in a network)."""
    import time

    for call in calls.values():
        for _ in range(warmup):
            call()
    best = {p: float("inf") for p in calls}
    for _ in range(rounds):
        for p, call in calls.items():
            for _ in range(per_round):
                t0 = time.thread_time()
                call()
                best[p] = min(best[p], (time.thread_time() - t0) * 1e3)
    return best


def profile_torch(model, input_shape: tuple[int, ...], threads: tuple[int, ...] = (1,), *, rounds: int = 7,
                  per_round: int = 3, warmup: int = 3) -> HostProfile:
    """The PyTorch reference, timed in this process (so no isolated peak memory) at each torch thread count."""
    import torch

    from ..proof.metrics import interleaved_times

    threads = tuple(_check_threads(threads))
    x = torch.randn(1, *input_shape)
    before = torch.get_num_threads()

    def call(n: int):
        def run() -> None:
            torch.set_num_threads(n)
            with torch.no_grad():
                model(x)
        return run

    try:
        samples = interleaved_times({n: call(n) for n in threads}, rounds=rounds, per_round=per_round, warmup=warmup)
    finally:
        torch.set_num_threads(before)
    return HostProfile(
        artifact=type(model).__name__, runtime="torch", runtime_version=torch.__version__,
        input_shape=[1, *input_shape], timings=[summarize(n, samples[n]) for n in threads], peak_memory_mb=None,
        cores=None, cpu=describe_cpu(), notes=["timed in-process: peak memory not isolated"],
    )


def _check_threads(threads) -> list[int]:
    n = os.cpu_count() or 1
    bad = [t for t in threads if not 1 <= int(t) <= n]
    if bad:
        raise BadInputError(f"--threads {bad[0]}: this machine has {n} logical CPUs; use 1..{n}")
    return sorted({int(t) for t in threads})


# ------------------------------------------------------------------------------------ worker (subprocess)


def _status_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def runner(path: str, threads: int):
    """(holder, call, input shape, runtime version) of an .onnx or .tflite file run here with ``threads`` threads,
    on seeded random inputs; keep ``holder`` alive while calling."""
    return (_onnx_runner if path.endswith(".onnx") else _tflite_runner)(path, threads)


def _onnx_runner(path: str, n: int, profile_dir: str | None = None):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_dir:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(profile_dir) / "ort")
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = np.float32 if "float" in i.type else np.int8 if "int8" in i.type else np.int64
        feed[i.name] = rng.standard_normal(shape).astype(dtype)
    shape = next(iter(feed.values())).shape
    return session, (lambda: session.run(None, feed)), list(shape), ort.__version__


def _tflite_runner(path: str, n: int):
    import numpy as np
    from ai_edge_litert import interpreter as lib

    interp = lib.Interpreter(model_path=path, num_threads=n)
    interp.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        dtype = np.dtype(d["dtype"])
        x = rng.standard_normal(d["shape"]) * (50 if dtype.kind == "i" else 1)
        interp.set_tensor(d["index"], x.astype(dtype))
    shape = [int(s) for s in interp.get_input_details()[0]["shape"]]
    from importlib.metadata import version

    return interp, interp.invoke, shape, version("ai-edge-litert")


def _onnx_layers(path: str, n: int, runs: int) -> list[dict]:
    """Per-node kernel times from onnxruntime's profiler: median over ``runs`` runs, slowest first."""
    with tempfile.TemporaryDirectory(prefix="edgerep-ortprof-") as tmp:
        session, run, _, _ = _onnx_runner(path, n, tmp)
        for _ in range(runs + 1):
            run()
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            times.setdefault(name, []).append(e["dur"] / 1e3)
            ops[name] = e.get("args", {}).get("op_name", "")
    rows = [{"name": k, "op": ops[k], "ms": round(statistics.median(v[1:] or v), 4)} for k, v in times.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def _worker(job: dict) -> dict:
    from ..proof.metrics import interleaved_times

    if job["cores"]:
        os.sched_setaffinity(0, job["cores"])  # before any runtime starts a thread: the pools inherit it
    path, threads = job["path"], job["threads"]
    onnx = path.endswith(".onnx")
    if onnx:
        import onnxruntime  # noqa: F401  (import before the baseline so its own footprint is not counted)
    else:
        from ai_edge_litert import interpreter  # noqa: F401
    reset = _reset_peak()
    baseline = _status_kb("VmRSS") or 0.0
    keep, calls, notes = [], {}, []
    try:
        holder, call, shape, version = runner(path, threads[0])
        for _ in range(job["warmup"]):
            call()
        peak = _status_kb("VmHWM")
        keep.append(holder)
        calls[str(threads[0])] = call
        for n in threads[1:]:
            holder, call, _, _ = runner(path, n)
            keep.append(holder)
            calls[str(n)] = call
    except Exception as exc:  # an artifact the runtime cannot load or run: one line, not a traceback
        return {"error": f"{'onnxruntime' if onnx else 'ai-edge-litert'} cannot run it ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"}
    samples = interleaved_times(calls, rounds=job["rounds"], per_round=job["per_round"], warmup=job["warmup"])
    if not reset:
        notes.append("peak memory includes the imports' own peak (/proc/self/clear_refs not writable)")
    out = {
        "runtime": "onnxruntime (CPUExecutionProvider)" if onnx else "ai-edge-litert (XNNPACK)", "version": version,
        "input_shape": shape, "samples": samples, "notes": notes,
        "peak_memory_mb": round(max(0.0, peak - baseline) / 1024, 2) if peak is not None else None,
    }
    if job["layers"]:
        if onnx:
            out["layers"] = _onnx_layers(path, threads[0], job["rounds"])
        else:
            notes.append("no measured per-layer times: LiteRT's op profiler is not reachable from Python (it is "
                         "benchmark_model --enable_op_profiling); `--device PROFILE --layers` predicts them")
    return out


if __name__ == "__main__":
    _job = json.loads(sys.stdin.read())
    print(json.dumps(_batch_worker(_job) if "paths" in _job else _worker(_job)))
