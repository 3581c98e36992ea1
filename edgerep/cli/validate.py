"""`edgerep validate ARTIFACT --arch aarch64`: run an artifact's ARM kernels (under emulation) and compare with x86."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import BadInputError
from .common import fraction, positive_int, status

ORDER = 25

EPILOG = """\
examples:
  edgerep validate out/repghostnet_050-int8.onnx              # shipped photos, manifest preprocessing
  edgerep validate out/repghostnet_050-int8.tflite --images photos/ --limit 50 --json
  edgerep validate mobilenet_v2.tflite --random 16           # any file without a manifest: random inputs

The artifact runs twice on the same inputs: on this host, and as an aarch64 process (qemu user-mode
emulation, with the aarch64 wheels of onnxruntime / ai-edge-litert, the host's versions). The first use
builds a cached aarch64 Python under ~/.cache/edgerep/aarch64 (about 250 MB, a few minutes; needs
qemu-user-static and apt-get, no root). Emulated time is not phone latency; the numerics are ARM's.
Exit codes: 0 compared, 1 top-1 agreement below --min-agreement (when given), 2 bad input or emulation
impossible (one line with the reason).
"""


def register(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "validate",
        help="run an .onnx / .tflite artifact's ARM (aarch64) kernels under emulation and compare with this host",
        description="Run the artifact on this host and as an aarch64 process on the same inputs and report "
        "how far the ARM outputs are from the x86 ones (max abs diff, relative diff, top-1 agreement).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("artifact", help=".onnx or .tflite file (an edgerep export or any other)")
    v.add_argument("--arch", choices=["aarch64"], default="aarch64", help="architecture to emulate (default aarch64)")
    v.add_argument("--images", help="photo folder (default: the shipped photos; needs the artifact's manifest)")
    v.add_argument("--random", type=positive_int, metavar="N", help="use N seeded random inputs instead of photos")
    v.add_argument("--limit", type=positive_int, default=200,
                   help="at most this many photos (emulation is slow; default 200)")
    v.add_argument("--min-agreement", type=fraction, metavar="F",
                   help="fail (exit 1) when ARM and x86 agree on the top-1 class for less than this fraction")
    v.add_argument("--cache", help="where the aarch64 root is cached (default ~/.cache/edgerep)")
    v.add_argument("--json", action="store_true", help="print the comparison as JSON on stdout")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices.emulate import compare_with_host

    artifact = Path(args.artifact)
    if artifact.suffix not in (".onnx", ".tflite"):
        raise BadInputError(f"{artifact.name}: only .onnx and .tflite artifacts run on aarch64 (Core ML needs Apple)")
    if not artifact.is_file():
        raise BadInputError(f"artifact {artifact} does not exist; check the path")
    inputs, description = _inputs(artifact, args)
    result = compare_with_host(args.artifact, inputs, description, cache=Path(args.cache) if args.cache else None,
                               progress=None if args.json else status)
    if args.min_agreement is not None and result.top1_agreement is None:
        raise BadInputError(f"{artifact.name} has no (N, classes) output, so --min-agreement does not apply")
    failed = args.min_agreement is not None and result.top1_agreement < args.min_agreement
    if args.json:
        print(json.dumps({**result.to_dict(), "ok": not failed}, indent=2))
    else:
        _print(result)
    if failed:
        print(f"error: aarch64 and x86_64 agree on the top-1 class for {result.top1_agreement:.3f} of the inputs,"
              f" below --min-agreement {args.min_agreement}", file=sys.stderr)
        return 1
    return 0


def _print(result) -> None:
    host, arm = result.host, result.arm
    print(f"{Path(result.artifact).name}: {result.inputs}")
    print(f"  {host['machine']['machine']:<7} {host['runtime']} {host['runtime_version']}"
          f" (Python {host['machine']['python']})")
    print(f"  aarch64 {arm['runtime']} {arm['runtime_version']} (Python {arm['machine']['python']}"
          f"{', emulated' if arm.get('emulated') else ''}, {result.arm_seconds:.1f} s)")
    agree = "" if result.top1_agreement is None else f", top-1 agreement {result.top1_agreement:.3f}"
    print(f"  max abs diff {result.max_abs:.3g}, relative {result.rel:.3g}{agree}")


def _inputs(artifact: Path, args: argparse.Namespace):
    """Preprocessed NCHW float32 inputs and their description: random, or photos with the manifest's recipe."""
    import numpy as np

    from .. import defaults
    from ..export.manifest import manifest_path, manifest_preprocess, read_manifest
    from ..images import list_images, load_images

    if args.random is not None:
        shape = _artifact_shape(artifact)
        x = np.random.default_rng(0).standard_normal((args.random, *shape)).astype(np.float32)
        return x, f"{args.random} random inputs (standard normal, seed 0)"
    mpath = manifest_path(artifact)
    if not mpath.is_file():
        raise BadInputError(f"{artifact.name} has no manifest ({mpath.name}), so its preprocessing is unknown;"
                            " pass --random N to compare on random inputs")
    pre = manifest_preprocess(read_manifest(mpath), mpath)
    folder = args.images or str(defaults.default_images_dir())
    items = list_images(folder)
    files = items.files[:: max(1, -(-len(items.files) // args.limit))][: args.limit]  # spread over the classes
    batch = load_images(files, pre)
    return batch.images.numpy(), f"{len(files)} photos from {folder}"


def _artifact_shape(artifact: Path) -> tuple[int, int, int]:
    """(C, H, W) of the artifact's input, read from the file itself (a manifest may be stale)."""
    from ..backends import read_input_spec
    from ..export.targets import artifact_suffixes, get_target

    return read_input_spec(get_target(artifact_suffixes()[artifact.suffix]), artifact).chw
