"""`edgerep profile`: latency of an ONNX / TFLite file, measured on this host or predicted for a device profile."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from ..errors import BadInputError
from .common import positive_int, split_list, status

ORDER = 40

EPILOG = """\
examples:
  edgerep profile model.tflite --device pixel4 --threads 4          # predicted, with its leave-one-out error
  edgerep profile model.onnx                                        # measured here (onnxruntime), 1 thread
  edgerep profile model.onnx --threads 1,2 --cores 0 --layers 15    # pinned to core 0, slowest nodes
  edgerep profile mobilenet_v2.tflite --device pixel7 --layers --json
  edgerep profile model.onnx --device ssh://pi@raspberrypi.local --threads 4 --identity ~/.ssh/id_ed25519
  edgerep profile model.tflite --device adb:R58M123 --threads 4 --benchmark-binary ./benchmark_model
  edgerep profile model.onnx --device host.toml --threads 1         # predicted from `edgerep calibrate`
  edgerep profile model.mlpackage --device iphone12pro --json       # Core ML: predicted from its MIL program
  edgerep profile --list                                            # the device profiles and their specs

--device host (the default) measures: warm-up, interleaved rounds, median / p90 / spread per thread count,
peak memory, the CPU measured. Any other device predicts: a per-layer roofline whose efficiencies are fitted
on published latencies (device_profiles/*.toml cite every one), always labelled PREDICTED with the
leave-one-out error of the fit. A .toml written by `edgerep calibrate` predicts from that device's own
per-kernel regressors (fusion-aware kernel list of the file, fitted on edgerep's kernel suite).
ssh://user@host copies the file and a small runner to the device and
times it there with the device's onnxruntime / ai-edge-litert; adb:SERIAL pushes a .tflite and runs
your benchmark_model build pinned to the big cores. A Core ML .mlpackage cannot be measured here (Core ML runs
only on macOS); for a device profile it is predicted from its MIL program as CPU execution (fp16 programs with
the fp32 fit), which says nothing about the GPU or Neural Engine Core ML may pick on the phone.
Exit codes: 0 done, 2 bad input (unknown device, unreadable artifact, runtime cannot run it).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="latency of an .onnx / .tflite file: measured on this host, or predicted for a phone profile",
        description="Measure an ONNX or TFLite file's latency on this machine with its own runtime, or predict it "
        "for a device profile (Pixel 1/3/4/7, Galaxy S23, iPhone 12 Pro CPU, Raspberry Pi 4/5) from its "
        "per-layer cost. Works on any ONNX or TFLite file, not only edgerep's exports; a Core ML .mlpackage is "
        "predicted (as CPU execution) from its MIL program.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", nargs="?", help=".onnx or .tflite file, or .mlpackage (device profiles only)")
    p.add_argument("--device", default="host",
                   help="host (measure), ssh://user@host[:port] or adb:SERIAL (measure there), a profile name "
                   "(predict; see --list) or a device file from edgerep calibrate (predict)")
    p.add_argument("--threads", help="threads (host: comma list, e.g. 1,2; default 1; device: default 4 big cores)")
    p.add_argument("--cores", help="host only: pin to these cores, e.g. 0 or 0,1")
    p.add_argument("--layers", nargs="?", type=int, const=10, default=0, metavar="N",
                   help="show the N slowest layers (default 10 when given)")
    p.add_argument("--rounds", type=positive_int, default=7, help="host only: interleaved timing rounds (default 7)")
    p.add_argument("--identity", help="ssh only: private key file")
    p.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="ssh only: extra ssh -o option, repeatable (e.g. UserKnownHostsFile=kh, ProxyJump=gw)")
    p.add_argument("--remote-python", default="python3", help="ssh only: the device's Python (default python3)")
    p.add_argument("--benchmark-binary", help="adb only: benchmark_model path on the device or a local file to push")
    p.add_argument("--list", action="store_true", help="list the device profiles with their key specs")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import is_real_device
    from ..profile.calibrate import is_device_file
    from ..profile.profiles import HOST, get_profile

    if args.list:
        return _list(args.json)
    if is_real_device(args.device):
        return _remote(args)
    if is_device_file(args.device):
        return _predict_calibrated(args)
    profile = get_profile(args.device)  # an unknown device fails first, listing the known ones
    if not args.artifact:
        raise BadInputError("give an .onnx or .tflite file to profile (see `edgerep profile --help`)")
    threads = [_int(t, "--threads") for t in split_list(args.threads or "")]
    if profile.name == HOST:
        return _measure(args, threads or [1])
    if args.cores:
        raise BadInputError("--cores pins threads on this host; a device prediction uses its fastest cores")
    if len(threads) > 1:
        raise BadInputError("give one --threads value for a device prediction, e.g. --threads 4")
    return _predict(args, profile, threads[0] if threads else min(4, profile.cores))


def _remote(args: argparse.Namespace) -> int:
    """Measure on a real device; a failure still prints what was measured before it (marked partial)."""
    from ..devices import run_on_device
    from ..devices.adb import BenchmarkOptions
    from ..devices.result import DeviceError
    from ..devices.ssh import SshOptions

    if not args.artifact:
        raise BadInputError("give an .onnx or .tflite file to profile (see `edgerep profile --help`)")
    threads = [_int(t, "--threads") for t in split_list(args.threads or "1")]
    if len(threads) != 1 or args.cores:
        raise BadInputError("a device run takes one --threads value and no --cores (adb pins to the big cores)")
    if not args.json:
        status(f"timing {args.artifact} on {args.device} with {threads[0]} thread(s)")
    try:
        result = run_on_device(
            args.artifact, args.device, threads=threads[0], profile=bool(args.layers),
            ssh=SshOptions(identity=args.identity, python=args.remote_python, options=tuple(args.ssh_option)),
            adb=BenchmarkOptions(threads=threads[0], op_profiling=bool(args.layers), binary=args.benchmark_binary),
        )
    except DeviceError as exc:
        if exc.result is not None:
            partial = exc.result.to_dict() if hasattr(exc.result, "to_dict") else exc.result
            print(json.dumps({"partial": True, "error": str(exc), "result": partial}, indent=2))
        raise
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    t = result.timing
    print(f"{args.artifact} on {result.device}: MEASURED with {result.runtime}, {result.threads} thread(s): "
          f"median {t.median_ms:.3f} ms" + (f", p90 {t.p90_ms:.3f} ms" if t.p90_ms is not None else "")
          + f" over {t.count} runs")
    if args.layers and result.ops:
        from ..tables import table

        ops = sorted(result.ops, key=lambda o: -o.avg_ms)[: args.layers]
        print(table(["op", "kind", "avg ms"], [(o.name[-48:], o.op, f"{o.avg_ms:.3f}") for o in ops], right={2}))
    return 0


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"{flag} {text!r} is not a whole number (e.g. {flag} 1,2)") from None


def _predict(args: argparse.Namespace, profile, threads: int) -> int:
    from ..profile.graph_cost import graph_cost
    from ..profile.predict import predict
    from ..tables import human, table

    if not args.json:
        status(f"reading {args.artifact} and fitting the {profile.name} predictor")
    cost = graph_cost(args.artifact)
    pred = predict(cost, profile, threads)
    if args.json:
        print(json.dumps({"artifact": args.artifact, "macs": cost.macs, "ops": len(cost.costed),
                          "profile": profile.to_dict(), **pred.to_dict(args.layers)}, indent=2))
        return 0
    used = Counter(f"{c.core.split(' (')[0]} @ {c.ghz:g} GHz" for c in profile.used_cores(threads))
    cores = ", ".join(f"{n}x {core}" for core, n in used.items())
    loo = pred.loo
    lofo = loo["leave_one_family_out"]
    flag = f"  [expected error {lofo['mean_abs_error']:.0%} > 25%]" if lofo["unreliable"] else ""
    print(f"{args.artifact} on {profile.name} ({profile.soc}): PREDICTED {pred.ms:.2f} ms{flag} "
          f"({pred.precision}, {threads} thread{'s' if threads > 1 else ''}: {cores})")
    print(f"graph: {human(cost.macs)} MACs, {len(cost.costed)} ops ({cost.format})")
    print(f"basis: {pred.basis}")
    print(f"leave-one-out error on {loo['scope']} ({loo['points']} points): mean {loo['mean_abs_error']:.0%}, "
          f"max {loo['max_abs_error']:.0%}; leave-one-family-out (an architecture the fit never saw) on "
          f"{lofo['scope']}: mean {lofo['mean_abs_error']:.0%}, max {lofo['max_abs_error']:.0%}")
    for note in pred.notes:
        print(f"note: {note}")
    if args.layers:
        rows = [(lc.name[-48:], lc.op, lc.kind, human(lc.macs), human(lc.bytes, "B"), f"{ms:.3f}",
                 f"{ms / pred.ms:.1%}") for lc, ms in pred.top_layers(args.layers)]
        print()
        print(table(["layer", "op", "kind", "MACs", "bytes", "predicted ms", "share"], rows, right={3, 4, 5, 6}))
    return 0


def _predict_calibrated(args: argparse.Namespace) -> int:
    """Predict from a calibrated device file's per-kernel regressors."""
    from ..profile.calibrate import load_device_file
    from ..profile.graph_cost import graph_cost
    from ..profile.kernel_table import predict_table
    from ..tables import human, table

    if not args.artifact:
        raise BadInputError("give an .onnx or .tflite file to profile (see `edgerep profile --help`)")
    threads = [_int(t, "--threads") for t in split_list(args.threads or "1")]
    if len(threads) != 1 or args.cores:
        raise BadInputError("a calibrated-device prediction takes one --threads value and no --cores")
    cal = load_device_file(args.device)
    cost = graph_cost(args.artifact)
    cal.check_format(args.artifact, cost.format)
    tab = cal.table(cost.precision, threads[0])
    pred = predict_table(cost, tab)
    if args.json:
        print(json.dumps({
            "label": "predicted", "artifact": args.artifact, "device_file": str(cal.path), "device": cal.name,
            "runtime": cal.runtime, "runtime_version": cal.runtime_version, "cpu": cal.cpu,
            "threads": threads[0], "precision": cost.precision, "latency_ms": round(pred.ms, 3),
            "partial": pred.partial, "notes": pred.notes, "macs": cost.macs, "ops": len(cost.costed),
            "suite_fit_error": tab.median_abs_error,
            "layers": [{"name": lc.name, "op": lc.op, "kernel": lc.kernel, "macs": lc.macs, "bytes": lc.bytes,
                        "ms": round(ms, 4)} for lc, ms in sorted(pred.layers, key=lambda x: -x[1])[: args.layers]],
        }, indent=2))
        return 0
    print(f"{args.artifact} on {cal.name} ({cal.cpu}): PREDICTED {pred.ms:.2f} ms"
          + (" (PARTIAL)" if pred.partial else "")
          + f" ({cost.precision}, {threads[0]} thread(s), {cal.runtime} {cal.runtime_version})")
    print(f"graph: {human(cost.macs)} MACs, {len(cost.costed)} ops ({cost.format})")
    print(f"basis: per-kernel regressors of {cal.path} ({tab.models} suite models, median fit error on the suite "
          f"{tab.median_abs_error:.1%})")
    for note in pred.notes:
        print(f"note: {note}")
    if args.layers:
        rows = [(lc.name[-48:], lc.kernel, human(lc.macs), f"{ms:.3f}", f"{ms / pred.ms:.1%}")
                for lc, ms in sorted(pred.layers, key=lambda x: -x[1])[: args.layers]]
        print()
        print(table(["layer", "kernel", "MACs", "predicted ms", "share"], rows, right={2, 3, 4}))
    return 0


def _measure(args: argparse.Namespace, threads: list[int]) -> int:
    from ..profile.host import profile_artifact
    from ..tables import table

    cores = [_int(c, "--cores") for c in split_list(args.cores)] if args.cores else None
    if not args.json:
        status(f"timing {args.artifact} on this host (threads {','.join(map(str, threads))}; noisy if the machine "
               "is busy)")
    result = profile_artifact(args.artifact, tuple(threads), cores=cores, rounds=args.rounds, layers=bool(args.layers))
    if args.json:
        d = result.to_dict()
        if d["layers"] is not None:
            d["layers"] = d["layers"][: args.layers]
        print(json.dumps(d, indent=2))
        return 0
    cpu = result.cpu
    print(f"{args.artifact} on this host: MEASURED with {result.runtime} {result.runtime_version}, "
          f"input {result.input_shape}")
    print(f"cpu: {cpu['model']} ({cpu['arch']}, {cpu['logical_cpus']} logical CPUs"
          f"{', VM' if cpu['hypervisor'] else ''}), flags: {' '.join(cpu['vector_flags']) or 'none'}"
          + (f"; pinned to cores {result.cores}" if result.cores else ""))
    rows = [(t.threads, f"{t.median_ms:.3f}", f"{t.p90_ms:.3f}", f"{t.min_ms:.3f}", f"{t.spread:.0%}", t.runs)
            for t in result.timings]
    print(table(["threads", "median ms", "p90 ms", "min ms", "spread (p90-p10)/median", "runs"], rows,
                right={0, 1, 2, 3, 4, 5}))
    if result.peak_memory_mb is not None:
        print(f"peak memory (load + run, over the runtime's own baseline): {result.peak_memory_mb:.1f} MB")
    for note in result.notes:
        print(f"note: {note}")
    if result.layers:
        total = sum(r["ms"] for r in result.layers)
        rows = [(r["name"][-48:], r["op"], f"{r['ms']:.3f}", f"{r['ms'] / total:.1%}" if total else "")
                for r in result.layers[: args.layers]]
        print()
        print(table(["node (onnxruntime, after its fusions)", "op", "measured ms", "share"], rows, right={2, 3}))
    return 0


def _list(as_json: bool) -> int:
    from ..profile.predict import FLAG_ERROR, lofo_summary, loo_summary
    from ..profile.profiles import all_profiles, get_profile
    from ..tables import table

    profiles = all_profiles()
    host = get_profile("host")
    if as_json:
        rows = [{**p.to_dict(), "leave_one_out_fp32": loo_summary(p.name, "fp32")["mean_abs_error"],
                 "leave_one_family_out": {prec: {k: v for k, v in lofo_summary(p.name, prec).items() if k != "rows"}
                                          for prec in ("fp32", "int8")}} for p in profiles]
        print(json.dumps(rows + [{**host.to_dict(), "measured": True}], indent=2))
        return 0
    rows = []
    for p in profiles:
        loo = loo_summary(p.name, "fp32")
        own = len(p.calibration)
        lofo = [lofo_summary(p.name, prec) for prec in ("fp32", "int8")]
        cells = [f"{x['mean_abs_error']:.0%}" + (" !" if x["unreliable"] else "") + ("" if own else " (pooled)")
                 for x in lofo]
        rows.append((p.name, p.soc, p.summary(), f"{p.peak_macs(min(4, p.cores), 'fp32') / 1e9:.0f}",
                     f"{p.bandwidth_gbs:g}", own or "-",
                     f"{loo['mean_abs_error']:.0%}" + ("" if own else " (pooled)"), *cells))
    rows.append(("host", "this machine", host.summary(), "", "", "-", "measured, not predicted", "", ""))
    print(table(["device", "SoC", "cores", "peak fp32 GMAC/s (4 big)", "memory GB/s", "calibration points",
                 "fp32 leave-one-out", "fp32 leave-one-family-out", "int8 leave-one-family-out"], rows,
                right={3, 4, 5}))
    print(f"leave-one-family-out: each published point predicted by a fit that saw no network of its family; "
          f"'!' = mean error above {FLAG_ERROR:.0%}: such predictions are flagged UNRELIABLE")
    print("every figure's source is in device_profiles/<device>.toml; predictions are labelled PREDICTED")
    return 0
