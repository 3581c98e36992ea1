"""`edgerep export`: export to every target and precision, validate each artifact, write manifests."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import BadInputError, EdgerepError, VerificationError
from .common import add_geometry, comma_list, fraction, geometry, key_value, renamed, split_list, status

ORDER = 20

EPILOG = """\
examples:
  edgerep export                                      # shipped model -> onnx, tflite, coreml in fp32 + int8
  edgerep export repvgg_a0 -c ck.pth --target onnx --precision int8 --calib photos/
  edgerep export repghostnet_100 -c ck.pth --target coreml --precision fp16,palettize6 -o out/ --json
  edgerep export model.pt2 --target onnx,tflite       # any torch.export.save'd program: re-parameterized first

Each artifact is run (Core ML on Linux: its MIL program is evaluated) and compared with the PyTorch
deploy model before it is kept; the allowed values, help and tolerances of each target are in targets/*.toml.
--option defaults per target (int8 ones apply to int8 only):
{options}
Exit codes: 0 every artifact validated, 1 at least one failed validation (others are kept), 2 bad input
(including a layer some target cannot convert: that row says "unsupported", the other targets still run).
"""


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="export to ONNX / TFLite / Core ML, validate each artifact against PyTorch, write a manifest",
        description="Load a checkpoint (a train-form one is fused and verified first), export it to each "
        "target and precision, run every artifact (Core ML on Linux: evaluate its MIL program) on real photos "
        "and random inputs, compare with the PyTorch deploy model, and keep only artifacts that pass, each "
        "with a JSON manifest (input spec, preprocessing, labels, validation, hashes, tool versions).",
        epilog=EPILOG.format(options=_option_defaults()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("model", nargs="?", help="zoo model name, or a .pt2 program (torch.export.save); "
                   "default: the shipped demo model")
    e.add_argument("-c", "--checkpoint", help="train- or deploy-form checkpoint; default: the shipped demo checkpoint")
    e.add_argument("--target", default=None, type=comma_list,
                   help="onnx, tflite, coreml, executorch, or all; comma-separated list allowed")
    e.add_argument("--precision", default=None, type=comma_list,
                   help="fp32, fp16, int8, w8, palettize4/6/8 (per target); comma list")
    e.add_argument("--images", help="photos for both roles below (a folder, one subfolder per class for accuracy)")
    e.add_argument("--calib", help="calibration photos for int8 (>= ~300 recommended; default: --images)")
    e.add_argument("--val", help="validation photos (default: --images, else the calibration photos)")
    e.add_argument("-o", "--output", default="edgerep-out", help="folder for artifacts and manifests")
    e.add_argument("--checkpoint-layout", choices=["auto", "timm", "original", "edgerep"], default="auto",
                   help="key naming of the checkpoint (default: detected from its keys)")
    e.add_argument("--input-layout", choices=["nchw", "nhwc"],
                   help="tensor layout of the artifact's input (default: the target's; nhwc: TFLite only)")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="target option, e.g. opset=18")
    e.add_argument("--min-agreement", type=fraction, help="int8 top-1 agreement floor (default: the target's)")
    e.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    renamed(e, "--output-dir", "--output")
    renamed(e, "--layout", "--checkpoint-layout")
    add_geometry(e)
    e.set_defaults(func=run)


def _option_defaults() -> str:
    """Every target's options with their defaults, from the target files (so the help never goes stale)."""
    import textwrap

    from ..export.targets import get_target, target_names

    lines = []
    for name in target_names():
        opts = ", ".join(f"{o.name}={o.shown_default()}" for o in get_target(name).options.values())
        lines += textwrap.wrap(opts, 104, initial_indent=f"  {name:<11}", subsequent_indent=" " * 13)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .. import defaults
    from ..api import export_checkpoint, is_program
    from ..export.targets import target_names
    from ..tables import human, table

    name, checkpoint = args.model, args.checkpoint
    if is_program(name) and checkpoint is None:  # a .pt2 program: any architecture, no zoo name
        name, checkpoint = None, name
    demo = name is None and checkpoint is None
    if demo:  # the embedded default: the whole path on the shipped model and photos
        name, checkpoint = defaults.default_model_name(), str(defaults.default_model_path())
    elif checkpoint is None:
        raise BadInputError(f"give the checkpoint of {name} with --checkpoint PATH (see `edgerep export --help`)")
    if demo and args.target is None and args.precision is None:
        plan = DEMO_PLAN
    else:
        targets = split_list(args.target or "onnx")
        targets = target_names() if targets == ["all"] else targets
        plan = [(t, p) for t in targets for p in split_list(args.precision or "fp32")]
    images = args.images or (str(defaults.default_images_dir()) if demo else None)
    calib = args.calib or images
    options = dict(key_value(o) for o in args.option)
    rows, info = export_checkpoint(
        name, checkpoint, plan=plan, output_dir=args.output, calibration=calib, validation=args.val or images or calib,
        checkpoint_layout=None if args.checkpoint_layout == "auto" else args.checkpoint_layout,
        input_layout=args.input_layout,
        options=options or None,
        tolerance={"top1_agreement": args.min_agreement} if args.min_agreement is not None else None,
        progress=None if args.json else status,
        overrides=geometry(args),
    )
    failed = [r for r in rows if isinstance(r[2], EdgerepError)]
    code = max((r.exit_code for _, _, r in failed), default=0)  # 2 for a layer a target cannot convert
    speed = _int8_speed(rows)
    if args.json:
        print(json.dumps({
            "ok": not failed, "model": info.model, "checkpoint": str(checkpoint), "sha256": info.sha256,
            "results": [
                {"target": t, "precision": p, "status": _status_of(r), "error": str(r),
                 "validation": r.report.to_dict() if getattr(r, "report", None) is not None else None}
                if isinstance(r, EdgerepError) else
                {"target": t, "precision": p, "status": "validated", "artifact": str(r.artifact),
                 "manifest": str(r.manifest_path), "size_bytes": r.size_bytes, "sha256": r.sha256,
                 "validation": r.validation.to_dict(), "warnings": r.warnings}
                for t, p, r in rows
            ],
            "speed_here": speed.to_dict() if speed.medians_ms else None,
        }, indent=2))
        return code
    table_rows = []
    for t, p, r in rows:
        v = getattr(r, "report", None) if isinstance(r, EdgerepError) else r.validation
        photos = next((s for s in v.sets if s.kind == "images"), v.sets[0]) if v is not None and v.sets else None
        table_rows.append((
            t, p, _status_of(r),
            "" if isinstance(r, EdgerepError) else human(r.size_bytes, "B"),
            f"{photos.max_abs:.3g}" if photos else "", f"{photos.cosine:.6f}" if photos else "",
            f"{photos.top1_agreement:.3f}" if photos else "",
            _acc(photos), "" if isinstance(r, EdgerepError) else r.artifact.name,
        ))
    print(f"{info.model}: {checkpoint} ({info.form} form, layout {info.layout})")
    print(table(["target", "precision", "status", "size", "max abs err", "cosine", "top-1 agree", "top-1 torch->artifact",
                 "artifact"], table_rows, right={3, 4, 5, 6}))
    print(f"artifacts and manifests in {args.output}/")
    if speed.lines():
        print("int8 speed-up over fp32 on this host (1 thread, median CPU time): " + "; ".join(speed.lines()))
    for w in speed.warnings():
        print(f"warning: {w}", file=sys.stderr)
    for t, p, r in failed:
        print(f"error: {t} {p}: {r}", file=sys.stderr)
    return code


def _int8_speed(rows):
    """Latencies of the validated artifacts measured here, when a target has both fp32 and int8 (quant/speed.py)."""
    from ..quant.speed import speed_report

    return speed_report({(t, p): r.artifact for t, p, r in rows if not isinstance(r, EdgerepError)})


def _status_of(result: object) -> str:
    if isinstance(result, VerificationError):
        return "FAILED"
    return "unsupported" if isinstance(result, EdgerepError) else "validated"


# The embedded default's whole path: the three phone targets, each in fp32 and in int8 (static, calibrated on the
# shipped photos; Core ML int8 is W8A8 calibrated through edgerep's MIL evaluator).
DEMO_PLAN = [(t, p) for t in ("onnx", "tflite", "coreml") for p in ("fp32", "int8")]


def _acc(s) -> str:
    if s is None or s.accuracy_reference is None:
        return ""
    return f"{s.accuracy_reference:.3f} -> {s.accuracy_artifact:.3f}"

