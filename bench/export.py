"""Time every export artifact with its own runtime on this host, interleaved, and report the ratios that matter.

    python bench/export.py --out bench/results/export.json
    python bench/export.py repvgg_a0:96 mobileone_s0 --threads 1 --rounds 5 --runtimes torch onnxruntime

Artifacts per model, batch 1:
- torch eager, train and deploy form: the reference;
- onnxruntime (CPU): the deploy model through edgerep's ONNX backend (dynamo export + onnxslim) in fp32 and
  static int8 QDQ; the train form through the same backend; train and deploy forms through a plain
  ``torch.onnx.export`` with its defaults and no simplification, which is what a user gets without edgerep;
- LiteRT (ai-edge-litert, XNNPACK): edgerep's TFLite backend, deploy fp32 and int8, train fp32;
- Core ML is listed, not timed: its runtime exists on macOS only.

For each thread count (onnxruntime intra-op threads, LiteRT num_threads, torch.set_num_threads) all artifacts of
a model are warmed up, then timed in interleaved rounds (``edgerep.proof.metrics.interleaved_times``): this machine is
shared and noisy, and interleaving makes the ratios within one run meaningful even when absolute times drift.
Ratios: deploy / train latency per export path, int8 speed-up (fp32 / int8) per runtime, and edgerep's ONNX
artifact / a plain ``torch.onnx.export`` of the same deploy model. The load average is recorded per group.

The shipped default model runs with its trained checkpoint at its own input size; other zoo models get random
weights and random BN statistics (``randomize_bn``) at 224x224, unless ``NAME:SIZE`` says otherwise. int8 is
calibrated on the shipped photos resized to the model's input: the speed is measured here, not the accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgerep.backends import ExportRequest, get_backend
from edgerep.checkpoints.load import load_model
from edgerep.defaults import DEFAULT_MODEL, default_images_dir, default_model_path, default_preprocess
from edgerep.errors import EdgerepError
from edgerep.export.manifest import tool_versions
from edgerep.images import Preprocess, list_images, load_images
from edgerep.profile.cpu import describe_cpu
from edgerep.proof.metrics import interleaved_times
from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import reparameterize
from edgerep.zoo import create_model, get_spec

DEFAULT_MODELS = (DEFAULT_MODEL, "repvgg_a0", "mobileone_s0")
RUNTIMES = ("torch", "onnxruntime", "litert")
RUNTIME_NOTES = {
    "torch": "PyTorch eager, inference_mode, torch.set_num_threads(threads)",
    "onnxruntime": "CPUExecutionProvider, intra_op_num_threads=threads, inter_op_num_threads=1",
    "litert": "ai-edge-litert Interpreter(num_threads=threads), default XNNPACK delegate",
    "coreml": "not timed (macOS only)",
}
# "plain": what a user writes without edgerep. external_data=False only keeps the weights in the same file.
PLAIN_ONNX_EXPORT = "torch.onnx.export(model, (x,), path, external_data=False)  # defaults: dynamo, no simplification"
PACKAGES = ("onnx", "onnxruntime", "onnxslim", "ai-edge-litert", "litert-torch", "ai-edge-quantizer", "torchao")


@dataclass
class Artifact:
    """One thing to time: an exported file run by its runtime, or a torch module run eagerly."""

    runtime: str  # torch | onnxruntime | litert
    form: str  # train | deploy
    precision: str  # fp32 | int8
    via: str  # eager | edgerep (its backend) | plain (torch.onnx.export defaults)
    file: Path | None = None
    module: nn.Module | None = None
    export_seconds: float | None = None
    size_bytes: int | None = None
    ops: dict[str, int] = field(default_factory=dict)  # ONNX op types: explains why one graph is slower

    @property
    def key(self) -> str:
        return f"{self.runtime} {self.form} {self.precision} ({self.via})"


def key(runtime: str, form: str, precision: str, via: str) -> str:
    return Artifact(runtime, form, precision, via).key


# (report, label, numerator, denominator): every ratio is median(numerator) / median(denominator).
RATIOS = [
    ("deploy_over_train", "torch eager", key("torch", "deploy", "fp32", "eager"),
     key("torch", "train", "fp32", "eager")),
    ("deploy_over_train", "onnxruntime, edgerep export", key("onnxruntime", "deploy", "fp32", "edgerep"),
     key("onnxruntime", "train", "fp32", "edgerep")),
    ("deploy_over_train", "onnxruntime, plain torch.onnx.export", key("onnxruntime", "deploy", "fp32", "plain"),
     key("onnxruntime", "train", "fp32", "plain")),
    ("deploy_over_train", "litert, edgerep export", key("litert", "deploy", "fp32", "edgerep"),
     key("litert", "train", "fp32", "edgerep")),
    ("int8_speedup", "onnxruntime", key("onnxruntime", "deploy", "fp32", "edgerep"),
     key("onnxruntime", "deploy", "int8", "edgerep")),
    ("int8_speedup", "litert", key("litert", "deploy", "fp32", "edgerep"), key("litert", "deploy", "int8", "edgerep")),
    ("edgerep_over_plain_onnx", "onnxruntime deploy fp32", key("onnxruntime", "deploy", "fp32", "edgerep"),
     key("onnxruntime", "deploy", "fp32", "plain")),
]
RATIO_MEANING = {
    "deploy_over_train": "latency ratio, deploy / train form, same export path and runtime (< 1: deploy is faster)",
    "int8_speedup": "speed-up, fp32 latency / int8 latency, same runtime (> 1: int8 is faster)",
    "edgerep_over_plain_onnx": "latency ratio, edgerep's ONNX artifact / plain torch.onnx.export (< 1: edgerep faster)",
    "two_threads_speedup": "speed-up, 1-thread latency / 2-thread latency, per artifact (> 1: 2 threads are faster)",
}


@dataclass
class Case:
    """A model to benchmark: both forms, its input, and real images for int8 calibration."""

    name: str
    size: int
    weights: str
    train: nn.Module
    deploy: nn.Module
    images: torch.Tensor  # preprocessed (N, 3, size, size)


def parse_model(token: str) -> tuple[str, int]:
    """``NAME`` or ``NAME:SIZE``; the default size is the shipped model's own, else 224."""
    name, _, size = token.partition(":")
    get_spec(name)  # an unknown name fails here, with the zoo's list
    if size:
        if not size.isdigit() or int(size) < 8:
            raise argparse.ArgumentTypeError(f"{token}: SIZE must be an integer >= 8 (e.g. {name}:96)")
        return name, int(size)
    return name, default_preprocess().size[0] if name == DEFAULT_MODEL else 224


def make_case(name: str, size: int, n_images: int, seed: int = 0) -> Case:
    """The shipped checkpoint for the default model, random weights and BN statistics for the others."""
    if name == DEFAULT_MODEL:
        train, _ = load_model(name, default_model_path())
        weights = "shipped checkpoint (trained on CIFAR-10)"
    else:
        torch.manual_seed(seed)  # the zoo's own initialisation draws from the global generator
        train = randomize_bn(create_model(name), torch.Generator().manual_seed(seed))
        weights = f"random (seed {seed}, randomize_bn)"
    train = train.eval()
    pre = default_preprocess()
    if name != DEFAULT_MODEL or pre.size != (size, size):
        spec = get_spec(name)
        pre = Preprocess.for_input((3, size, size), spec.mean, spec.std, 0.875 if size >= 128 else 1.0)
    files = list_images(default_images_dir()).files
    files = files[:: max(1, len(files) // n_images)][:n_images]  # spread over the class folders
    return Case(name, size, weights, train, reparameterize(train).eval(), load_images(files, pre).images.float())


def build_artifacts(case: Case, runtimes: Sequence[str], workdir: Path, say: Callable[[str], None],
                    deploy_only: bool = False, failed: dict[str, str] | None = None) -> list[Artifact]:
    """Export everything ``runtimes`` can run (timing each export); torch artifacts are the modules themselves.

    ``deploy_only``: just edgerep's deploy-form fp32 and int8 artifacts (the int8 speed-up question). An export
    that fails is left out and its error put in ``failed``.
    """
    failed = {} if failed is None else failed
    shape = (1, 3, case.size, case.size)
    arts: list[Artifact] = []
    if "torch" in runtimes:
        arts += [Artifact("torch", "train", "fp32", "eager", module=case.train),
                 Artifact("torch", "deploy", "fp32", "eager", module=case.deploy)]
    plans: list[tuple[str, str, str, str, Callable[[Path], object]]] = []
    calib = case.images
    if "onnxruntime" in runtimes:
        onnx = get_backend("onnx")
        plans += [
            ("onnxruntime", "deploy", "fp32", "edgerep", _backend_export(onnx, case.deploy, shape, "fp32")),
            ("onnxruntime", "deploy", "int8", "edgerep", _backend_export(onnx, case.deploy, shape, "int8", calib)),
            ("onnxruntime", "train", "fp32", "edgerep", _backend_export(onnx, case.train, shape, "fp32")),
            ("onnxruntime", "deploy", "fp32", "plain", lambda p: plain_onnx_export(case.deploy, shape, p)),
            ("onnxruntime", "train", "fp32", "plain", lambda p: plain_onnx_export(case.train, shape, p)),
        ]
    if "litert" in runtimes:
        tflite = get_backend("tflite")
        plans += [
            ("litert", "deploy", "fp32", "edgerep", _backend_export(tflite, case.deploy, shape, "fp32")),
            ("litert", "deploy", "int8", "edgerep", _backend_export(tflite, case.deploy, shape, "int8", calib)),
            ("litert", "train", "fp32", "edgerep", _backend_export(tflite, case.train, shape, "fp32")),
        ]
    if deploy_only:
        plans = [plan for plan in plans if plan[1] == "deploy" and plan[3] == "edgerep"]
    for runtime, form, precision, via, write in plans:
        art = Artifact(runtime, form, precision, via)
        art.file = workdir / f"{form}-{precision}-{via}{'.onnx' if runtime == 'onnxruntime' else '.tflite'}"
        say(f"  exporting {art.key}")
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
                write(art.file)
        except EdgerepError as exc:  # e.g. a layer one converter cannot take: the other artifacts are still timed
            say(f"  {art.key} failed: {str(exc)[:300]}")
            failed[art.key] = str(exc)
            continue
        art.export_seconds = round(time.perf_counter() - t0, 2)
        art.size_bytes = art.file.stat().st_size
        if runtime == "onnxruntime":
            art.ops = _onnx_ops(art.file)
        arts.append(art)
    return arts


def _backend_export(backend, model: nn.Module, shape, precision: str, calib: torch.Tensor | None = None):
    return lambda path: backend.export(model, ExportRequest(shape, precision, calib), path)


def plain_onnx_export(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """``torch.onnx.export`` as a user calls it (see ``PLAIN_ONNX_EXPORT``), with its progress lines silenced."""
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model.eval(), (torch.zeros(shape),), str(path), external_data=False)


def _onnx_ops(path: Path) -> dict[str, int]:
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {"total": sum(ops.values()), **dict(sorted(ops.items()))}


def make_call(art: Artifact, x: np.ndarray, threads: int) -> Callable[[], object]:
    """A zero-argument call that runs ``art`` once on ``x`` with ``threads`` threads (session built outside)."""
    if art.runtime == "torch":
        xt = torch.from_numpy(x)

        def run_torch() -> object:
            with torch.inference_mode():
                return art.module(xt)

        return run_torch
    if art.runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(art.file), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        return lambda: session.run(None, feed)
    if art.runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        from edgerep.backends.tflite import to_input

        interp = Interpreter(model_path=str(art.file), num_threads=threads)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        fed = to_input(x, inp)  # int8 models take int8 input: quantized once, as a camera pipeline would

        def run_litert() -> object:
            interp.set_tensor(inp["index"], fed)
            interp.invoke()
            return interp.get_tensor(out["index"])

        return run_litert
    raise ValueError(f"unknown runtime {art.runtime!r}; use one of {', '.join(RUNTIMES)}")


def _rel_error(art: Artifact, x: np.ndarray, ref: torch.Tensor) -> float:
    """Relative error against the torch deploy model: a broken artifact's speed means nothing."""
    if art.runtime == "torch":
        with torch.inference_mode():
            out = art.module(torch.from_numpy(x))
    else:
        backend = get_backend("onnx" if art.runtime == "onnxruntime" else "tflite")
        out = torch.from_numpy(np.asarray(backend.run(art.file, x)))
    return output_error(ref.reshape(out.shape), out.float()).rel


def stats(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples), 4),
        "p90_ms": round(float(np.percentile(samples, 90)), 4),
        "min_ms": round(min(samples), 4),
        "n": len(samples),
    }


def ratios(latency: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The RATIOS whose two artifacts were both timed, from medians in ms keyed by artifact key."""
    out: dict[str, dict[str, float]] = {}
    for report, label, num, den in RATIOS:
        if num in latency and den in latency:
            out.setdefault(report, {})[label] = round(latency[num]["median_ms"] / latency[den]["median_ms"], 3)
    return out


def bench_case(
    case: Case,
    *,
    runtimes: Sequence[str] = RUNTIMES,
    threads: Sequence[int] = (1, 2),
    rounds: int = 9,
    per_round: int = 5,
    warmup: int = 3,
    say: Callable[[str], None] = lambda _msg: None,
    clock: str = "wall",
    deploy_only: bool = False,
) -> dict:
    """Export ``case`` for every runtime, time all artifacts per thread count in interleaved rounds, report."""
    torch_threads = torch.get_num_threads()
    x = case.images[:1].numpy().copy()  # a real photo: int8 kernels see realistic activations
    with torch.inference_mode():
        ref = case.deploy(torch.from_numpy(x))
    with tempfile.TemporaryDirectory(prefix="edgerep-bench-export-") as tmp:
        failed: dict[str, str] = {}
        arts = build_artifacts(case, runtimes, Path(tmp), say, deploy_only, failed)
        rows = {a.key: _row(a, x, ref) for a in arts}
        groups = {}
        try:
            for t in threads:
                torch.set_num_threads(t)
                load = os.getloadavg()
                say(f"  timing {len(arts)} artifacts, {t} thread(s), {rounds} interleaved rounds (load {load[0]:.2f})")
                calls = {a.key: make_call(a, x, t) for a in arts}
                samples = interleaved_times(calls, rounds=rounds, per_round=per_round, warmup=warmup, clock=clock)
                del calls  # free the sessions (and their thread pools) before the next thread count
                latency = {k: stats(v) for k, v in samples.items()}
                for k, s in latency.items():
                    rows[k]["latency"][str(t)] = s
                groups[str(t)] = {"loadavg_before": [round(v, 2) for v in load],
                                  "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                                  "ratios": ratios(latency)}
        finally:
            torch.set_num_threads(torch_threads)
    if "1" in groups and "2" in groups:
        groups["2"]["ratios"]["two_threads_speedup"] = {
            k: round(r["latency"]["1"]["median_ms"] / r["latency"]["2"]["median_ms"], 3) for k, r in rows.items()
        }
    return {
        "model": case.name,
        "input": [1, 3, case.size, case.size],
        "weights": case.weights,
        "calibration_images": len(case.images),
        "artifacts": list(rows.values()),
        "failed_exports": failed,
        "threads": groups,
    }


def _row(art: Artifact, x: np.ndarray, ref: torch.Tensor) -> dict:
    return {
        "key": art.key,
        "runtime": art.runtime,
        "form": art.form,
        "precision": art.precision,
        "via": art.via,
        "export_seconds": art.export_seconds,
        "size_bytes": art.size_bytes,
        "onnx_ops": art.ops or None,
        "rel_err_vs_torch_deploy": float(f"{_rel_error(art, x, ref):.3g}"),
        "latency": {},
    }


def format_table(result: dict) -> str:
    """A readable summary of one model's result: per artifact latency, then the ratios."""
    threads = list(result["threads"])
    head = f"{result['model']} {result['input'][2]}x{result['input'][3]}, {result['weights']}"
    loads = "  ".join(f"{t} thr: load {g['loadavg_before'][0]:.2f}" for t, g in result["threads"].items())
    lines = [head, f"  {loads}"]
    cols = "".join(f"  {t + ' thr med / p90 ms':>21}" for t in threads)
    lines.append(f"  {'artifact':<38} {'size KB':>9} {'ONNX ops':>8} {'rel err':>8}{cols}")
    for r in result["artifacts"]:
        size = f"{r['size_bytes'] / 1024:.0f}" if r["size_bytes"] else "-"
        ops = str(r["onnx_ops"]["total"]) if r["onnx_ops"] else "-"
        times = "".join(
            f"  {r['latency'][t]['median_ms']:>10.3f} / {r['latency'][t]['p90_ms']:>8.3f}" for t in threads
        )
        lines.append(f"  {r['key']:<38} {size:>9} {ops:>8} {r['rel_err_vs_torch_deploy']:>8.2g}{times}")
    reports = {rep for g in result["threads"].values() for rep in g["ratios"] if rep != "two_threads_speedup"}
    for report in [r for r in RATIO_MEANING if r in reports]:
        labels = [label for rep, label, _, _ in RATIOS if rep == report]
        for label in labels:
            vals = [f"{t} thr {g['ratios'][report][label]:.3f}" for t, g in result["threads"].items()
                    if label in g["ratios"].get(report, {})]
            if vals:
                lines.append(f"  {report:<24} {label:<38} {'   '.join(vals)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", type=parse_model, metavar="NAME[:SIZE]",
                   help=f"zoo models (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    p.add_argument("--per-round", type=int, default=5, help="timed calls of each artifact per round (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each artifact first (default 3)")
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    p.add_argument("--calib-images", type=int, default=32, help="shipped photos for int8 calibration (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random weights of the non-shipped models")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    p.add_argument("--clock", choices=("wall", "thread-cpu"), default="wall",
                   help="thread-cpu: the calling thread's CPU time (1 thread only; robust on a loaded machine)")
    p.add_argument("--deploy-only", action="store_true", help="only edgerep's deploy fp32 / int8 artifacts")
    args = p.parse_args(argv)
    if args.clock == "thread-cpu" and args.threads != [1]:
        p.error("--clock thread-cpu measures one thread: give --threads 1")
    if min(args.threads) < 1 or args.rounds < 1 or args.per_round < 1 or args.warmup < 0 or args.calib_images < 1:
        p.error("--threads, --rounds, --per-round and --calib-images must be >= 1, --warmup >= 0")
    models = args.models or [parse_model(m) for m in DEFAULT_MODELS]

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started, t0, load0 = datetime.now(timezone.utc), time.perf_counter(), os.getloadavg()
    results = []
    for name, size in models:
        say(f"{name} at {size}x{size}")
        case = make_case(name, size, args.calib_images, args.seed)
        results.append(bench_case(case, runtimes=args.runtimes, threads=args.threads, rounds=args.rounds,
                                  per_round=args.per_round, warmup=args.warmup, say=say, clock=args.clock,
                                  deploy_only=args.deploy_only))
        print(format_table(results[-1]) + "\n", flush=True)
    result = {
        "command": " ".join(["python", "bench/export.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu": describe_cpu(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "platform": platform.platform(),
                 "loadavg_start": [round(v, 2) for v in load0],
                 "loadavg_end": [round(v, 2) for v in os.getloadavg()]},
        "tools": tool_versions(PACKAGES),
        "settings": {"threads": args.threads, "rounds": args.rounds, "per_round": args.per_round,
                     "warmup": args.warmup, "clock": args.clock, "batch": 1, "calib_images": args.calib_images,
                     "seed": args.seed},
        "runtimes": {r: RUNTIME_NOTES[r] for r in (*args.runtimes, "coreml")},
        "plain_onnx_export": PLAIN_ONNX_EXPORT,
        "ratio_meaning": RATIO_MEANING,
        "models": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, args.out)
    say(f"{len(results)} models in {result['seconds']} s" + (f"; wrote {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
