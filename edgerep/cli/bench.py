"""`edgerep bench`: the accuracy-latency trade-off of models x targets x precisions x devices."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..errors import BadInputError
from .common import add_geometry, comma_list, geometry, renamed, split_list, status

ORDER = 60

EPILOG = """\
examples:
  edgerep bench                                         # shipped model, onnx+tflite fp32/int8, host + pixel4
  edgerep bench repghostnet_050=ck.pt repvgg_a0=a0.pt --target onnx,tflite --precision fp32,int8 \\
      --device host,pixel7 --threads 1,2 --images photos/ -o bench-out/
  edgerep bench mobileone_s0 repvgg_a0 --device pixel4   # bare zoo names: random weights, latency only
  edgerep bench a0=a0.pth --input-size 32 --mean 0.49,0.48,0.45 --std 0.25,0.24,0.26 --labels classes.txt
  edgerep bench a=a.pt b=b.pt --device host,adb:R58M123,pixel7 --ray 10.0.0.5:6379   # on a Ray cluster

MODEL is NAME=CHECKPOINT, an edgerep checkpoint path, or a bare zoo name (random weights: its accuracy
column stays empty, agreement with fp32 is still measured). Devices: `host` (measured here with each
artifact's runtime), ssh://user@host (measured on the device), adb:SERIAL (TFLite, with your
benchmark_model build), or a profile name from `edgerep profile --list` (predicted, always labelled so).
Writes tradeoff.md, tradeoff.csv, tradeoff.json and tradeoff.png (accuracy vs latency, one colour per
target, the Pareto front marked) into the output folder; a row whose stage failed is kept and marked.
The input geometry flags apply to every model given (as in `edgerep export`).

--ray [auto|HOST:PORT] (pip install "edgerep[ray]"): each export is a Ray task, each timing a task on the
node that advertises the device as a resource (ray start --resources '{"device:adb:R58M123": 1}';
device:ssh://user@host; device:host:NAME for a node's own CPU, timed as device host:NAME; plain `host`
means every such node). Same report, plus the node each latency was measured on (CSV/JSON).
A lost worker's task is retried once elsewhere, else its rows are marked; Ctrl-C writes the partial report.
"""


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="accuracy-latency trade-off table and Pareto plot over models, targets, precisions, devices",
        description="For each model: deploy, export to each target and precision, validate and evaluate each "
        "artifact on labelled photos, time it on each device (measured or predicted), and write the "
        "trade-off as Markdown, CSV, JSON and a Pareto plot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("models", nargs="*", metavar="MODEL", help="NAME=CKPT, a checkpoint, or a zoo name")
    b.add_argument("--target", default="onnx,tflite", type=comma_list, help="comma list (default: onnx,tflite)")
    b.add_argument("--precision", default="fp32,int8", type=comma_list, help="comma list (default: fp32,int8)")
    b.add_argument("--device", default="host,pixel4", type=comma_list, help="comma list (default: host,pixel4)")
    b.add_argument("--threads", default="1", type=comma_list, help="comma list of thread counts (default: 1)")
    b.add_argument("--images", help="labelled photos, one folder per class (default: the shipped CIFAR-10 sample)")
    b.add_argument("--calib", help="calibration photos for int8 (default: --images)")
    b.add_argument("-o", "--output", default="edgerep-bench", help="folder for artifacts and the report")
    b.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    b.add_argument("--ray", nargs="?", const="auto", metavar="auto|HOST:PORT",
                   help="run on a Ray cluster (default address: auto, the cluster this machine belongs to)")
    b.add_argument("--artifact-store", metavar="DIR",
                   help="--ray: a folder every node shares, for artifacts (default: Ray's object store)")
    b.add_argument("--identity", help="ssh devices: private key file (on the node holding the device)")
    b.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="ssh devices: extra ssh -o option, repeatable")
    b.add_argument("--remote-python", default="python3", help="ssh devices: the device's Python (default python3)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    add_geometry(b)
    for old, new in (("--targets", "--target"), ("--precisions", "--precision"), ("--devices", "--device"),
                     ("--output-dir", "--output")):
        renamed(b, old, new)
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import defaults
    from ..export.targets import get_target
    from ..fileio import removed_if_empty, writable_dir, write_text
    from ..tradeoff.run import run_bench
    from ..tradeoff.table import terminal_table, to_csv, to_json, to_markdown

    models = args.models or [f"{defaults.default_model_name()}={defaults.default_model_path()}"]
    plan = [(t, p) for t in split_list(args.target) for p in split_list(args.precision)]
    for t, p in plan:
        get_target(t).precision(p)  # refused up front, with the allowed list
    devices = split_list(args.device)
    threads = _threads(args.threads)
    _check_devices(devices, ray=args.ray is not None)
    if args.artifact_store and args.ray is None:
        raise BadInputError("--artifact-store is for --ray runs; drop it or add --ray")
    ssh = _ssh_options(args) if any(d.startswith("ssh://") for d in devices) else None
    images = args.images or defaults.default_images_dir()
    interrupted = False
    with removed_if_empty(args.output) as out:  # a refused or failed run leaves no empty folder
        writable_dir(out)
        if args.ray is not None:
            from ..tradeoff.cluster import run_bench_ray

            with contextlib.redirect_stdout(sys.stderr):  # Ray prints cluster events (a node marked dead) on stdout
                result = run_bench_ray(models, plan, devices, threads, address=args.ray, output_dir=out,
                                       images=images, calibration=args.calib, artifact_store=args.artifact_store,
                                       progress=status, ssh=ssh, overrides=geometry(args))
            rows, interrupted = result.rows, result.interrupted
            _refuse_if_nothing_ran(rows, interrupted)
        else:
            rows = run_bench(models, plan, devices, threads, output_dir=out, images=images,
                             calibration=args.calib, progress=status, ssh=ssh, overrides=geometry(args))
        for suffix, text in ((".md", to_markdown(rows)), (".csv", to_csv(rows)), (".json", to_json(rows))):
            write_text(out / f"tradeoff{suffix}", text)
        written = [f"tradeoff{s}" for s in (".md", ".csv", ".json")]
        if not args.no_plot:
            from ..tradeoff.plot import plot_tradeoff

            plot_tradeoff(rows, out / "tradeoff.png")
            written.append("tradeoff.png")
        if args.json:
            print(to_json(rows), end="")
        else:
            print(terminal_table(rows))
            print(f"wrote {', '.join(written)} in {out}/ (latency kind: measured here / on a device, or predicted)")
    if interrupted:
        not_run = sum(r.status.startswith("cancelled") for r in rows)
        print(f"error: interrupted; partial report written to {out}/ ({not_run} rows cancelled)", file=sys.stderr)
        return 2
    return 0


def _refuse_if_nothing_ran(rows, interrupted: bool) -> None:
    """Every row failed (e.g. no worker has the runtime): say why once per reason, and write nothing."""
    if interrupted or any(r.latency_ms is not None for r in rows):
        return
    reasons = list(dict.fromkeys(r.status for r in rows))
    raise BadInputError(f"nothing could run on the Ray cluster: {reasons[0]}"
                        + (f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else ""))


def _ssh_options(args: argparse.Namespace):
    from ..devices.ssh import SshOptions

    return SshOptions(identity=args.identity, python=args.remote_python, options=tuple(args.ssh_option))


def _threads(text: str) -> list[int]:
    try:
        values = [int(v) for v in split_list(text)]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BadInputError(f"--threads {text!r}: give positive integers, e.g. --threads 1,2")
    return values


def _check_devices(devices: list[str], ray: bool) -> None:
    from ..devices import is_real_device
    from ..profile.profiles import get_profile

    for d in devices:
        if not (d == "host" or is_real_device(d) or (ray and d.startswith("host:"))):
            get_profile(d)  # unknown names are refused here with the list of known ones
