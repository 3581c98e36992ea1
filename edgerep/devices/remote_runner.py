"""Run one .onnx or .tflite artifact and print one JSON line: timings, the machine, and optionally its outputs.

This file is copied to the device (ssh) or run under emulation as it is, so it imports only the standard
library, numpy and the artifact's runtime (onnxruntime or ai_edge_litert), never edgerep. It always ends by
printing a JSON object on stdout, also when it fails: ``error`` then says what failed (``kind`` is one of
``runtime-missing``, ``artifact-incompatible``, ``bad-inputs``, ``run-failed``) and every field measured before
the failure is kept, so the caller can report partial results. Exit code 0 on success, 3 otherwise.

Usage: python remote_runner.py MODEL [--inputs X.npy --outputs Y.npy] [--threads N] [--warmup N] [--runs N]
                               [--profile]
``--inputs`` holds preprocessed NCHW float32 images; a channels-last or int8-input artifact gets them transposed
and quantized here, so every runtime is fed the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time


class RunnerError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="time and run one .onnx / .tflite artifact, print JSON")
    p.add_argument("model")
    p.add_argument("--inputs", help=".npy of preprocessed NCHW float32 images to run (outputs go to --outputs)")
    p.add_argument("--outputs", help="where to save the outputs of --inputs as .npy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=20, help="timed runs (0: only compute outputs)")
    p.add_argument("--profile", action="store_true", help="per-op times (onnxruntime only)")
    args = p.parse_args(argv)
    result: dict = {"ok": False, "error": None, "stage": "start", "machine": _machine(), "runs_ms": [], "ops": []}
    try:
        _run(args, result)
        result["ok"] = True
        result["stage"] = "done"
    except RunnerError as exc:
        result["error"] = {"kind": exc.kind, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - anything else still ends as JSON with what was measured
        result["error"] = {"kind": "run-failed", "message": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 3


def _run(args: argparse.Namespace, result: dict) -> None:
    try:
        import numpy as np
    except ImportError as exc:
        raise RunnerError("runtime-missing", f"numpy is not installed for {sys.executable} ({exc})") from None
    result["stage"] = "load"
    runner = _load(args.model, args.threads, profile=False)
    result.update(runtime=runner.runtime, runtime_version=runner.version, input=runner.input_info(),
                  load_ms=runner.load_ms, threads=args.threads)
    if args.runs > 0:  # first: "first_ms" is the first inference after loading, as on a phone
        result["stage"] = "timing"
        sample = runner.sample(np)
        t0 = time.perf_counter()
        runner.invoke(sample)
        result["first_ms"] = (time.perf_counter() - t0) * 1e3
        for _ in range(args.warmup):
            runner.invoke(sample)
        for _ in range(args.runs):  # appended one by one: a failure halfway keeps the runs done so far
            t0 = time.perf_counter()
            runner.invoke(sample)
            result["runs_ms"].append((time.perf_counter() - t0) * 1e3)
    if args.inputs:
        result["stage"] = "outputs"
        x = _inputs(args.inputs, np)
        y = runner.run_images(x)
        result["outputs_shape"] = list(y.shape)
        if args.outputs:
            tmp = args.outputs + ".tmp.npy"
            np.save(tmp, y)
            os.replace(tmp, args.outputs)
    if args.profile and args.runs > 0 and runner.runtime == "onnxruntime":
        result["stage"] = "profile"
        result["ops"] = _ort_op_profile(args, np)


def _inputs(path: str, np):
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RunnerError("bad-inputs", f"cannot read inputs {path} ({exc})") from None
    if x.ndim != 4:
        raise RunnerError("bad-inputs", f"inputs must be NCHW images, got shape {list(x.shape)}")
    return x.astype(np.float32, copy=False)


def _load(path: str, threads: int, profile: bool, profile_dir: str | None = None):
    if path.endswith(".onnx"):
        return _Ort(path, threads, profile, profile_dir)
    if path.endswith(".tflite"):
        return _Tflite(path, threads)
    raise RunnerError("artifact-incompatible", f"{os.path.basename(path)}: only .onnx and .tflite files can be run")


class _Ort:
    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int, profile: bool, profile_dir: str | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RunnerError("runtime-missing", f"onnxruntime is not installed for {sys.executable} ({exc})") from None
        self.version = ort.__version__
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(profile_dir or ".", "ort")
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad/unsupported models
            raise RunnerError("artifact-incompatible",
                              f"onnxruntime {self.version} cannot load {os.path.basename(path)}: {exc}") from None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.inp = self.session.get_inputs()[0]

    def input_info(self) -> dict:
        return {"name": self.inp.name, "shape": [d if isinstance(d, int) else str(d) for d in self.inp.shape],
                "dtype": self.inp.type}

    def nchw_shape(self) -> list[int]:
        return [d if isinstance(d, int) and d > 0 else 1 for d in self.inp.shape]

    def sample(self, np):
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(self.inp.type)
        if dtype is None:
            raise RunnerError("artifact-incompatible", f"input type {self.inp.type} is not an image tensor")
        return np.random.default_rng(0).standard_normal(self.nchw_shape()).astype(dtype)

    def invoke(self, x) -> object:
        return self.session.run(None, {self.inp.name: x})[0]

    def run_images(self, x):
        import numpy as np

        batch = self.inp.shape[0] if isinstance(self.inp.shape[0], int) and self.inp.shape[0] > 0 else len(x)
        if list(x.shape[1:]) != self.nchw_shape()[1:]:
            raise RunnerError("bad-inputs", f"model input is {self.input_info()['shape']}, images are {list(x.shape)}")
        outs = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            n = len(chunk)
            if n < batch:  # fixed-batch graph: pad the last chunk, drop the padding's outputs
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(np.asarray(self.invoke(chunk))[:n])
        return np.concatenate(outs).astype(np.float32)


class _Tflite:
    runtime = "ai-edge-litert"

    def __init__(self, path: str, threads: int) -> None:
        try:
            from ai_edge_litert import interpreter as lib
        except ImportError as exc:
            raise RunnerError("runtime-missing",
                              f"ai_edge_litert is not installed for {sys.executable} ({exc})") from None
        self.version = _version("ai-edge-litert")
        t0 = time.perf_counter()
        try:
            self.interp = lib.Interpreter(model_path=path, num_threads=threads)
            self.interp.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError/RuntimeError for bad or unsupported models
            raise RunnerError("artifact-incompatible",
                              f"ai-edge-litert {self.version} cannot load {os.path.basename(path)}: {exc}") from None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def input_info(self) -> dict:
        scale, zero_point = self.inp["quantization"]
        return {"name": self.inp["name"], "shape": [int(d) for d in self.inp["shape"]],
                "dtype": str(self.inp["dtype"].__name__), "scale": float(scale), "zero_point": int(zero_point)}

    def _channels_last(self) -> bool:
        shape = [int(d) for d in self.inp["shape"]]
        return len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3)

    def nchw_shape(self) -> list[int]:
        shape = [max(int(d), 1) for d in self.inp["shape"]]
        return [shape[0], shape[3], shape[1], shape[2]] if self._channels_last() else shape

    def sample(self, np):
        return self._quantize(np.random.default_rng(0).standard_normal([max(int(d), 1) for d in self.inp["shape"]])
                              .astype(np.float32), np)

    def _quantize(self, x, np):
        dtype = np.dtype(self.inp["dtype"])
        if dtype == np.float32:
            return x
        scale, zero_point = self.inp["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)

    def invoke(self, x):
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"])

    def run_images(self, x):
        import numpy as np

        if list(x.shape[1:]) != self.nchw_shape()[1:]:
            raise RunnerError("bad-inputs", f"model input is {self.input_info()['shape']}, images are {list(x.shape)}")
        if self._channels_last():
            x = x.transpose(0, 2, 3, 1)
        scale, zero_point = self.out["quantization"]
        outs = []
        for i in range(len(x)):  # LiteRT artifacts have a fixed batch of 1
            y = self.invoke(self._quantize(np.ascontiguousarray(x[i : i + 1]), np))
            outs.append(y.astype(np.float32) if scale == 0 else (y.astype(np.float32) - zero_point) * scale)
        return np.concatenate(outs).astype(np.float32)


def _ort_op_profile(args: argparse.Namespace, np) -> list[dict]:
    """Per-node kernel times (ms per inference) from onnxruntime's profiler, on a separate profiled session.

    Each node's warm-up calls are dropped by keeping only its last ``runs`` kernel events (a node runs once per
    inference), so the averages cover the same number of inferences as the wall-clock timings.
    """
    with tempfile.TemporaryDirectory(prefix="edgerep-prof-") as tmp:
        runner = _Ort(args.model, args.threads, True, tmp)
        sample = runner.sample(np)
        for _ in range(args.warmup + args.runs):
            runner.invoke(sample)
        with open(runner.session.end_profiling()) as f:
            events = json.load(f)
    per_node: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per_node.setdefault(name, [e.get("args", {}).get("op_name", "")]).append(float(e.get("dur", 0)))
    ops = []
    for name, (op, *durations) in per_node.items():
        kept = durations[-args.runs :]
        ops.append({"name": name, "op": op, "avg_ms": sum(kept) / len(kept) / 1e3})
    return ops


def _machine() -> dict:
    return {"machine": platform.machine(), "system": platform.system(), "release": platform.release(),
            "python": platform.python_version(), "executable": sys.executable, "cpu_count": os.cpu_count(),
            "cpu": _cpu_model()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "CPU part"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor()


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - a version is informative only
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
