"""Predicted vs measured latency on models the calibration never saw, on this host; JSON to bench/results/.

    edgerep calibrate host -o bench/results/host_onnxruntime_1t_threadcpu.toml --threads 1
    python bench/predict_accuracy.py --device-files bench/results/host_onnxruntime_1t_threadcpu.toml \
        --threads 1 --passes 6 --clock thread-cpu --out bench/results/predict_accuracy_threadcpu.json
    (2 threads: calibrate a second device file with --threads 2 and list both, comma-separated)
    edgerep calibrate host -o bench/results/host_litert_1t.toml --runtime litert --threads 1
    python bench/predict_accuracy.py --runtime litert --device-files bench/results/host_litert_1t.toml \
        --threads 1 --passes 2 --clock thread-cpu --out bench/results/predict_accuracy_litert.json

Models: the networks of ``edgerep.profile.style_nets`` (MobileNetV3 / EfficientNet-lite, some with TF-"same" pads
computed at run time / RegNet / GhostNet / ResNet styles) and zoo deploy forms (RepVGG, MobileOne, RepGhostNet,
MobileNetV2, ResNet), none of them in the kernel suite. Each is exported to ONNX (dynamic batch) and to QDQ int8
(onnxruntime's quant_pre_process + quantize_static, random calibration data: latency does not depend on the
values). With ``--runtime litert`` each is exported by edgerep's own TFLite backend instead (the path of `edgerep
export --target tflite`: litert-torch, NCHW input, fp32 and full-integer PT2E int8 with float logits, minmax ranges
on 8 random images). Measured: ``edgerep.profile.host.profile_artifact`` (the runner of `edgerep profile`), every
thread count interleaved in one run, the whole model list timed in ``--passes`` passes in alternating order.
``measured_ms`` is the fastest run over all passes (``error`` is against it) and ``measured_median_ms`` the median
of the pass medians (``error_vs_median``): this machine is shared (load average 6-12 on 2 cores while this was
written), a median there measures the other jobs as much as the model, and the calibration fits fastest times for
the same reason (``host.time_many``). Predicted: ``kernel_table.predict_table`` from the device file of that thread
count. ``--clock thread-cpu`` (1 thread) measures instead, in this process, the CPU time of the thread the runtime
computes in (fastest of 15 runs per pass): the time the model itself takes, which other jobs on the machine cannot
inflate. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgerep.errors import EdgerepError
from edgerep.profile.calibrate import load_device_file
from edgerep.profile.cpu import describe_cpu
from edgerep.profile.graph_cost import graph_cost
from edgerep.profile.host import profile_artifact
from edgerep.profile.kernel_table import predict_table
from edgerep.profile.style_nets import TEST_NETS, build

ZOO = ("mobilenetv2_100", "mobileone_s0", "repghostnet_050", "repvgg_a0", "resnet18")


def _zoo(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    from edgerep.reparam import reparameterize
    from edgerep.zoo import create_model, get_spec

    torch.manual_seed(0)
    return reparameterize(create_model(name).eval()).eval(), tuple(get_spec(name).input_size)


def export(name: str, out: Path) -> tuple[Path, Path]:
    """fp32 ONNX (dynamic batch) and QDQ int8 ONNX of ``name``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, int8 = out / f"{name}.onnx", out / f"{name}_int8.onnx"
    if fp32.is_file() and int8.is_file():
        return fp32, int8
    model, shape = _zoo(name) if name in ZOO else build(name)
    with torch.no_grad():
        torch.onnx.export(model, torch.zeros(1, *shape), str(fp32), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.standard_normal((1, *shape)).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.data, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return fp32, int8


def export_tflite(name: str, out: Path) -> tuple[Path, Path]:
    """fp32 and int8 .tflite of ``name``, written by edgerep's TFLite backend (``edgerep export`` defaults)."""
    from edgerep.backends.base import ExportRequest
    from edgerep.backends.tflite import BACKEND

    fp32, int8 = out / f"{name}.tflite", out / f"{name}_int8.tflite"
    if fp32.is_file() and int8.is_file():
        return fp32, int8
    model, shape = _zoo(name) if name in ZOO else build(name)
    calib = torch.randn((8, *shape), generator=torch.Generator().manual_seed(0))
    for precision, path in (("fp32", fp32), ("int8", int8)):
        BACKEND.export(model, ExportRequest((1, *shape), precision, calib if precision == "int8" else None,
                                            options={"calibrate_method": "minmax"}), path)
    return fp32, int8


def thread_cpu_ms(path: Path, runs: int = 15, warmup: int = 3) -> tuple[float, float]:
    """(fastest thread-CPU ms, fastest wall ms) of 1-thread runs in this process: onnxruntime with one intra-op
    thread computes in the calling thread, so its CPU time excludes the time other jobs held the core."""
    from edgerep.profile.host import runner

    holder, call, _, _ = runner(str(path), 1)
    for _ in range(warmup):
        call()
    cpu, wall = [], []
    for _ in range(runs):
        t0, w0 = time.thread_time(), time.perf_counter()
        call()
        cpu.append((time.thread_time() - t0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return min(cpu), min(wall)


def _family(model: str) -> str:
    """Architecture family of a style net or zoo name: ``regnetx_200mf_224`` -> ``regnet``, ``mnv3_small_0.5_128``
    -> ``mobilenet``."""
    head = model.split("_")[0].rstrip("0123456789")
    return {"mnv": "mobilenet", "mobilenetv": "mobilenet", "effnet": "efficientnet", "regnetx": "regnet",
            "regnety": "regnet", "repghostnet": "ghostnet"}.get(head, head)


def _measured(path: Path, order: list, threads: tuple[int, ...], clock: str) -> tuple[dict, list]:
    """The per-pass measurements of an earlier run, keyed like a fresh run's (refused if they do not match)."""
    old = json.loads(path.read_text())
    if old.get("clock") != clock:
        raise SystemExit(f"{path}: measured with --clock {old.get('clock')}, not {clock}")
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in old["rows"]:
        for i, (wall_or_median, fastest_or_cpu) in enumerate(r["measured_passes_median_min_ms"]):
            while len(runs.setdefault((r["model"], r["precision"]), [])) <= i:
                runs[(r["model"], r["precision"])].append({})
            runs[(r["model"], r["precision"])][i][r["threads"]] = (wall_or_median, fastest_or_cpu)
    missing = [f"{n} {p}" for n, p, _ in order if any(t not in r for r in runs.get((n, p), [{}]) for t in threads)]
    if missing:
        raise SystemExit(f"{path} has no measurement of {missing[0]}")
    return runs, old.get("loadavg_per_pass", [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device-files", required=True, help="comma list of edgerep calibrate outputs (one per threads)")
    p.add_argument("--models", default=",".join([*TEST_NETS, *ZOO]))
    p.add_argument("--runtime", choices=("onnxruntime", "litert"), default="onnxruntime",
                   help="onnxruntime: .onnx files (QDQ int8); litert: .tflite files from edgerep's TFLite backend")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", default="/tmp/edgerep-predict-accuracy", help="where the exported files are kept")
    p.add_argument("--clock", choices=("wall", "thread-cpu"), default="wall",
                   help="wall: profile_artifact as `edgerep profile` (default); thread-cpu: 1 thread only, CPU time "
                   "of the computing thread, which a loaded machine does not inflate")
    p.add_argument("--reuse-measured", metavar="JSON",
                   help="take the measured times from an earlier output of this script (same models, clock and "
                   "threads) and only predict again: for a refitted device file, without timing anything")
    p.add_argument("--out", default="bench/results/predict_accuracy.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    threads = tuple(int(t) for t in args.threads.split(","))
    if args.clock == "thread-cpu" and threads != (1,):
        p.error("--clock thread-cpu measures one thread: give --threads 1")
    cals = [load_device_file(f) for f in args.device_files.split(",")]
    for c in cals:
        c.check_format("the models", "tflite" if args.runtime == "litert" else "onnx")
    tables = {key: (c, t) for c in cals for key, t in c.tables.items()}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in args.models.split(","):
        files[name] = (export_tflite if args.runtime == "litert" else export)(name, work)
        print(f"exported {name}", file=sys.stderr)
    runs: dict[tuple[str, str], list[dict]] = {}
    loads = []
    order = [(n, prec, path) for n, (f, q) in files.items() for prec, path in (("fp32", f), ("int8", q))]
    if args.reuse_measured:
        runs, loads = _measured(Path(args.reuse_measured), order, threads, args.clock)
    for i in range(0 if args.reuse_measured else args.passes):
        loads.append(os.getloadavg()[0])
        for name, prec, path in order if i % 2 == 0 else order[::-1]:
            if args.clock == "thread-cpu":
                cpu, wall = thread_cpu_ms(path)
                runs.setdefault((name, prec), []).append({1: (wall, cpu)})
                print(f"pass {i}: {name} {prec}: thread-cpu {cpu:.3f} wall {wall:.3f}", file=sys.stderr)
                continue
            prof = profile_artifact(path, threads, rounds=args.rounds)
            runs.setdefault((name, prec), []).append({t.threads: (t.median_ms, t.min_ms) for t in prof.timings})
            print(f"pass {i}: {name} {prec}: {[(t.median_ms, t.min_ms) for t in prof.timings]}", file=sys.stderr)
    if not args.reuse_measured:
        loads.append(os.getloadavg()[0])
    rows = []
    for name, prec, path in order:
        cost = graph_cost(path)
        for t in threads:
            median = statistics.median(r[t][0] for r in runs[(name, prec)])
            measured = min(r[t][1] for r in runs[(name, prec)])
            row = {"model": name, "source": "zoo" if name in ZOO else "style_nets", "runtime": args.runtime,
                   "precision": prec, "threads": t, "macs": cost.macs, "measured_ms": round(measured, 3),
                   "measured_median_ms": round(median, 3),
                   "measured_passes_median_min_ms": [[round(v, 3) for v in r[t]] for r in runs[(name, prec)]]}
            if (cost.precision, t) in tables:
                pred = predict_table(cost, tables[(cost.precision, t)][1])
                row.update(predicted_ms=round(pred.ms, 3), error=round(pred.ms / measured - 1, 4),
                           error_vs_median=round(pred.ms / median - 1, 4), partial=pred.partial, notes=pred.notes)
            else:
                row["error"] = None
                row["notes"] = [f"no calibration for {cost.precision} at {t} thread(s)"]
            rows.append(row)
    errs = [abs(r["error"]) for r in rows if r["error"] is not None]
    errs_median = [abs(r["error_vs_median"]) for r in rows if r.get("error_vs_median") is not None]
    summary = {"predictions": len(errs), "within_10pct": sum(e <= 0.10 for e in errs),
               "within_10pct_vs_median": sum(e <= 0.10 for e in errs_median),
               "within_20pct": sum(e <= 0.20 for e in errs),
               "median_abs_error": round(statistics.median(errs), 4) if errs else None}
    for t in threads:
        for prec in ("fp32", "int8"):
            e = [abs(r["error"]) for r in rows if r["error"] is not None and r["threads"] == t
                 and r["precision"] == prec]
            if e:
                summary[f"{prec}_{t}t"] = {"n": len(e), "within_10pct": sum(x <= 0.10 for x in e),
                                            "median_abs_error": round(statistics.median(e), 4)}
    families: dict[str, list[float]] = {}
    for r in rows:
        if r["error"] is not None:
            families.setdefault(_family(r["model"]), []).append(abs(r["error"]))
    summary["by_family"] = {f: {"n": len(e), "within_10pct": sum(x <= 0.10 for x in e),
                                "median_abs_error": round(statistics.median(e), 4)}
                            for f, e in sorted(families.items())}
    cpu = describe_cpu()
    out = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv), "clock": args.clock,
           "measured_in": args.reuse_measured or "this run",
           "cpu": {"model": cpu["model"], "flags": cpu["vector_flags"], "logical_cpus": cpu["logical_cpus"]},
           "device_files": [str(c.path) for c in cals], "loadavg_per_pass": loads, "summary": summary, "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(out, f, indent=2)
    os.replace(f.name, path)
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EdgerepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
