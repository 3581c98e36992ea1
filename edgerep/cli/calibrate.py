"""`edgerep calibrate`: time edgerep's kernel suite on a device and write a device file for `profile --device`."""

from __future__ import annotations

import argparse
import json

from .common import split_list, status

ORDER = 41

EPILOG = """\
examples:
  edgerep calibrate host -o host.toml                                 # this machine, 1 thread, <= 14 min
  edgerep calibrate host -o host2.toml --threads 2 --budget 15
  edgerep calibrate host -o host_litert.toml --runtime litert        # LiteRT (XNNPACK): .tflite suite
  edgerep calibrate ssh://pi@raspberrypi.local -o pi5.toml --identity ~/.ssh/id_ed25519
  edgerep profile model.onnx --device host.toml                       # then predict any model from it
  edgerep profile model.tflite --device host_litert.toml              # (a file of the device file's runtime)

The suite holds single-kernel and small-block models (convs by kernel, stride and group width, RGB stems,
depthwise 3x3/5x5 s1/s2, pointwise s1/s2, fc, ReLU / hard-swish / sigmoid / hard-sigmoid / GELU / tanh / SiLU,
add, mul, per-channel mul, squeeze-excite, pools, concat / pad / transpose / split / slice / resize copies,
run-time shape arithmetic) over sampled shapes, in fp32 and QDQ int8; chains of 1, 2 or 4 copies separate a
kernel's own cost from the per-run cost. --runtime litert builds the same kernels (less shape arithmetic,
reduce-mean, lone ReLU and SiLU, which litert-torch files do not hold as ops of their own) as .tflite files with
litert-torch: NHWC, fused activations, fp32 and full-integer int8 (PT2E, per-channel weights), cached under
~/.cache/edgerep/litert-suite for the next device. Each is
timed through the runner `edgerep profile` uses on that device; per-kernel regressors are fitted and written
with the runtime's and edgerep's versions and the CPU. Timings are cached in OUT.partial.json after every
batch: run the same command again after an interruption and it resumes. The device file is written once,
at the end. Exit codes: 0 done, 2 bad input (unreachable device, runtime missing there, bad option).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="time edgerep's kernel suite on a device; write a device file to predict with",
                       description="Calibrate a device for latency prediction with edgerep's own kernel suite.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("device", help="host or ssh://user@host[:port] (adb: not yet; a phone through ssh)")
    p.add_argument("-o", "--output", required=True, help="device file to write (.toml)")
    p.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "litert"),
                   help="runtime to calibrate: onnxruntime (.onnx suite) or litert (.tflite suite); predicts "
                   "files of that runtime only")
    p.add_argument("--threads", type=int, default=1, help="threads (default 1)")
    p.add_argument("--budget", type=float, default=14.0, metavar="MINUTES",
                   help="time budget for building and timing (default 14); suite models are covered "
                   "round-robin")
    p.add_argument("--per-kernel", type=int,
                   help="sampled shapes per kernel (default: onnxruntime 20: 1480 models, ~14 min on one x86 core; "
                   "litert 4: 248 models, 13 min the first time, mostly litert-torch building them, cached after)")
    p.add_argument("--kernels", help="comma list of suite kernels to time (default: all; e.g. pointwise,add)")
    p.add_argument("--identity", help="ssh only: private key file")
    p.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="ssh only: extra ssh -o option, repeatable")
    p.add_argument("--remote-python", default="python3", help="ssh only: the device's Python (default python3)")
    p.add_argument("--json", action="store_true", help="print the fit summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices.ssh import SshOptions
    from ..profile.calibrate import calibrate, load_device_file

    if not args.json:
        status(f"calibrating {args.device} ({args.runtime}, {args.threads} thread(s), budget {args.budget:g} min)")
    path = calibrate(args.device, args.output, runtime=args.runtime, threads=args.threads, budget_min=args.budget,
                     per_kernel=args.per_kernel, progress=not args.json,
                     kernels=tuple(split_list(args.kernels)) if args.kernels else None,
                     ssh=SshOptions(identity=args.identity, python=args.remote_python, options=tuple(args.ssh_option)))
    cal = load_device_file(path)
    fits = [{"precision": p, "threads": t, "models": tab.models, "kernels": len(tab.kernels),
             "median_abs_error_on_suite": tab.median_abs_error} for (p, t), tab in sorted(cal.tables.items())]
    if args.json:
        print(json.dumps({"device_file": str(path), "device": args.device, "runtime": cal.runtime,
                          "runtime_version": cal.runtime_version, "cpu": cal.cpu, "fits": fits}, indent=2))
        return 0
    print(f"wrote {path}: {cal.runtime} {cal.runtime_version} on {cal.cpu}")
    for f in fits:
        print(f"  {f['precision']} @ {f['threads']} thread(s): {f['models']} suite models, {f['kernels']} kernels, "
              f"median fit error on the suite {f['median_abs_error_on_suite']:.1%}")
    suffix = ".tflite" if cal.runtime == "litert" else ".onnx"
    print(f"predict with: edgerep profile MODEL{suffix} --device {path} --threads {args.threads}")
    return 0
