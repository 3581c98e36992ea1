"""The ``edgerep`` command: parse arguments, call ``edgerep.api``, print tables or JSON, map errors to exit codes.

Exit codes: 0 done, 1 verification failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from . import __version__
from .errors import BadInputError, EdgerepError, VerificationError

EPILOG_DEPLOY = """\
examples:
  edgerep deploy                                   # the shipped default model and photos
  edgerep deploy repvgg_a0 -c repvgg_a0.pth -o repvgg_a0_deploy.pt
  edgerep deploy repvgg_a0 -c RepVGG-A0-train.pth --layout original --images photos/ --json

The checkpoint may come from timm, from the original papers' repositories or from edgerep; its layout
is detected from its keys (force one with --layout). It must be in training form: a deploy-form
checkpoint is already fused (give it to `edgerep export`). The deploy checkpoint is written only when
every check passes (relative error = max|deploy - train| / max|train| <= --rtol).
"""


EPILOG_EXPORT = """\
examples:
  edgerep export                                      # shipped model -> every target, fp32 + 8-bit
  edgerep export repvgg_a0 -c ck.pth --target onnx --precision int8 --calib photos/
  edgerep export repghostnet_100 -c ck.pth --target coreml --precision fp16,palettize6 -o out/ --json

Each artifact is run (Core ML on Linux: its MIL program is evaluated) and compared with the PyTorch
deploy model before it is kept; the allowed options and tolerances of each target are in targets/*.toml.
Exit codes: 0 every artifact validated, 1 at least one failed validation (others are kept), 2 bad input
(including a layer some target cannot convert: that row says "unsupported", the other targets still run).
"""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, category, *_a, **_k: f"warning: {message}\n"
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except VerificationError as exc:
        if exc.report is not None and not getattr(args, "json", False):
            from .report import format_deploy_report

            print(format_deploy_report(exc.report))
        elif exc.report is not None:
            print(json.dumps({"ok": False, "error": str(exc), "report": exc.report.to_dict()}, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except EdgerepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # export and deploy write through temporary paths: nothing is left half-written
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgerep",
        description="Re-parameterized CNNs from training checkpoint to verified phone artifact.",
        epilog="Run `edgerep COMMAND --help` for each command's options and examples.",
    )
    p.add_argument("--version", action="version", version=f"edgerep {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    d = sub.add_parser(
        "deploy",
        help="fuse every re-param block into its deploy form and prove equivalence",
        description="Load a training-form checkpoint, fuse every re-param block, verify the deploy form "
        "against the training form (random inputs, real photos, the checkpoint's own reference outputs), "
        "and write the deploy checkpoint.",
        epilog=EPILOG_DEPLOY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("model", nargs="?", help="zoo model name (see `edgerep models`); default: the shipped demo model")
    d.add_argument("-c", "--checkpoint", help="training-form checkpoint (.pt/.pth); default: the shipped demo checkpoint")
    d.add_argument("-o", "--output", help="where to write the deploy checkpoint (atomically); omit to only verify")
    d.add_argument(
        "--layout", choices=["auto", "timm", "original", "edgerep"], default="auto",
        help="key layout of the checkpoint (default: detected from its keys)",
    )
    d.add_argument("--images", help="folder of real photos for the check (default: the shipped CIFAR-10 sample)")
    d.add_argument("--no-images", action="store_true", help="check on random inputs only")
    d.add_argument("--rtol", type=float, default=1e-5, help="tolerated relative error (default: 1e-5, fp32)")
    d.add_argument("--no-latency", action="store_true", help="skip the train-vs-deploy torch timing")
    d.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    d.set_defaults(func=_cmd_deploy)

    e = sub.add_parser(
        "export",
        help="export to ONNX / TFLite / Core ML, validate each artifact against PyTorch, write a manifest",
        description="Load a checkpoint (a train-form one is fused and verified first), export it to each "
        "target and precision, run every artifact (Core ML on Linux: evaluate its MIL program) on real photos "
        "and random inputs, compare with the PyTorch deploy model, and keep only artifacts that pass, each "
        "with a JSON manifest (input spec, preprocessing, labels, validation, hashes, tool versions).",
        epilog=EPILOG_EXPORT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("model", nargs="?", help="zoo model name; default: the shipped demo model")
    e.add_argument("-c", "--checkpoint", help="train- or deploy-form checkpoint; default: the shipped demo checkpoint")
    e.add_argument("--target", default=None, help="onnx, tflite, coreml, or all; comma-separated list allowed")
    e.add_argument("--precision", default=None, help="fp32, fp16, int8, w8, palettize4/6/8 (per target); comma list")
    e.add_argument("--calib", help="folder of calibration photos for int8 (>= ~300 recommended)")
    e.add_argument("--val", help="folder of validation photos (default: the calibration photos)")
    e.add_argument("-o", "--output-dir", default="edgerep-out", help="where artifacts and manifests go")
    e.add_argument("--layout", choices=["auto", "timm", "original", "edgerep"], default="auto")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="target option, e.g. opset=18")
    e.add_argument("--min-agreement", type=float, help="int8 top-1 agreement floor (default: the target's)")
    e.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    e.set_defaults(func=_cmd_export)

    m = sub.add_parser(
        "models",
        help="list zoo models with parameters and MACs in train and deploy form",
        description="List the model zoo. Sizes are computed on PyTorch's meta device: no weights are allocated.",
    )
    m.add_argument("--family", help="only this family (e.g. repvgg, mobileone, repghostnet)")
    m.add_argument("--json", action="store_true", help="print JSON on stdout")
    m.set_defaults(func=_cmd_models)
    return p


def _cmd_deploy(args: argparse.Namespace) -> int:
    from . import defaults
    from .api import deploy_checkpoint
    from .report import format_deploy_report

    name, checkpoint = args.model, args.checkpoint
    if name is None and checkpoint is None:
        name, checkpoint = defaults.default_model_name(), str(defaults.default_model_path())
    elif checkpoint is None:
        raise BadInputError(f"give the checkpoint of {name} with --checkpoint PATH (see `edgerep deploy --help`)")
    images = None if args.no_images else (args.images or defaults.default_images_dir())
    _status(f"deploying {name + ' from ' if name else ''}{checkpoint}")
    t0 = time.perf_counter()
    result = deploy_checkpoint(
        name,
        checkpoint,
        output=args.output,
        layout=None if args.layout == "auto" else args.layout,
        rtol=args.rtol,
        images=images,
        latency=not args.no_latency,
    )
    src = result.source
    if args.json:
        print(json.dumps({
            "ok": True,
            "model": src.model,
            "checkpoint": str(checkpoint),
            "layout": src.layout,
            "sha256": src.sha256,
            "output": str(result.output) if result.output else None,
            "seconds": round(time.perf_counter() - t0, 2),
            "report": result.report.to_dict(),
        }, indent=2))
        return 0
    print(f"{src.model}: {checkpoint} (layout {src.layout}, {src.form} form, {src.num_classes} classes)")
    print(format_deploy_report(result.report))
    print(f"wrote {result.output}" if result.output else "verified only; add -o PATH to write the deploy checkpoint")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from . import defaults
    from .api import export_checkpoint
    from .report import human, table
    from .targets import target_names

    name, checkpoint = args.model, args.checkpoint
    demo = name is None and checkpoint is None
    if demo:  # the embedded default: the whole path on the shipped model and photos
        name, checkpoint = defaults.default_model_name(), str(defaults.default_model_path())
    elif checkpoint is None:
        raise BadInputError(f"give the checkpoint of {name} with --checkpoint PATH (see `edgerep export --help`)")
    if demo and args.target is None and args.precision is None:
        plan = DEMO_PLAN
    else:
        targets = _split(args.target or "onnx")
        targets = target_names() if targets == ["all"] else targets
        plan = [(t, p) for t in targets for p in _split(args.precision or "fp32")]
    calib = args.calib or (str(defaults.default_images_dir()) if demo else None)
    options = dict(_key_value(o) for o in args.option)
    rows, info = export_checkpoint(
        name, checkpoint, plan=plan, output_dir=args.output_dir,
        calibration=calib, validation=args.val or calib, layout=None if args.layout == "auto" else args.layout,
        options=options or None,
        tolerance={"top1_agreement": args.min_agreement} if args.min_agreement is not None else None,
        progress=None if args.json else _status,
    )
    failed = [r for r in rows if isinstance(r[2], EdgerepError)]
    code = max((r.exit_code for _, _, r in failed), default=0)  # 2 for a layer a target cannot convert
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
    print(f"artifacts and manifests in {args.output_dir}/")
    for t, p, r in failed:
        print(f"error: {t} {p}: {r}", file=sys.stderr)
    return code


def _status_of(result: object) -> str:
    if isinstance(result, VerificationError):
        return "FAILED"
    return "unsupported" if isinstance(result, EdgerepError) else "validated"


# The embedded default's whole path: each target in fp32 and its smallest validated form (Core ML W8A8 needs
# macOS to calibrate, so its 8-bit form here is weight-only).
DEMO_PLAN = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"), ("coreml", "fp32"), ("coreml", "w8")]


def _acc(s) -> str:
    if s is None or s.accuracy_reference is None:
        return ""
    return f"{s.accuracy_reference:.3f} -> {s.accuracy_artifact:.3f}"


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BadInputError(f"--option {text!r} is not KEY=VALUE (e.g. --option opset=18)")
    return key.strip(), value.strip()


def _cmd_models(args: argparse.Namespace) -> int:
    from .report import human, table
    from .zoo_summary import summarize_zoo

    rows = summarize_zoo(args.family)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        table(
            ["model", "family", "input", "params train", "params deploy", "MACs train", "MACs deploy", "blocks"],
            [
                (r["name"], r["family"], "x".join(map(str, r["input_size"])), human(r["params_train"]),
                 human(r["params_deploy"]), human(r["macs_train"]), human(r["macs_deploy"]), r["blocks"])
                for r in rows
            ],
            right={3, 4, 5, 6, 7},
        )
    )
    return 0


def _status(msg: str) -> None:
    print(msg + " ...", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
