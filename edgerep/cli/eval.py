"""`edgerep eval`: top-1 / top-5 and agreement with fp32 of checkpoints and artifacts, on real images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import BadInputError
from .common import add_geometry, geometry, positive_int, renamed, status

ORDER = 30

EPILOG = """\
examples:
  edgerep eval                                        # the shipped model on the shipped 200 CIFAR-10 photos
  edgerep eval edgerep-out/                           # every artifact edgerep export wrote, one table
  edgerep eval model-int8.tflite --images photos/ --reference ck.pt
  edgerep eval ck.pth --model repvgg_a0 --images val.npz --json
  edgerep eval edgerep-out/ -o results.json && edgerep check results.json --baseline accuracy.json
  edgerep eval --sensitivity                          # which layers of the shipped model hurt int8 most

An artifact is run by its own runtime (ONNX: onnxruntime, TFLite: LiteRT, Core ML: MLModel.predict on macOS,
its MIL program evaluated elsewhere) on images preprocessed as its manifest (the .json beside it) says.
Class folders are matched to the model's labels by name; an .npz holds `images` (N,H,W,3 uint8 or N,3,H,W
float, preprocessed) and optional `labels` (indices). Agreement with the fp32 PyTorch model (top-1 match,
mean KL, cosine of logits) needs no labels; an artifact's reference is by default the checkpoint its
manifest names, when that file is still there unchanged.
Exit codes: 0 measured (eval judges nothing: `edgerep check` does), 2 bad input.
"""


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="accuracy (top-1/top-5) and agreement with fp32 of checkpoints and exported artifacts",
        description="Measure top-1 / top-5 on labelled images and agreement with the fp32 PyTorch model (top-1 "
        "match, mean KL, cosine) of PyTorch checkpoints and of exported artifacts run through their own runtime.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("paths", nargs="*", metavar="ARTIFACT_OR_CHECKPOINT",
                   help="artifacts (.onnx, .tflite, .mlpackage, or their manifest .json), checkpoints, or folders of"
                   " artifacts; default: the shipped checkpoint")
    e.add_argument("--model", help="zoo model name, for checkpoints that do not record it or artifacts without"
                   " a manifest")
    e.add_argument("--images", help="image folder (one subfolder per class, or flat: agreement only) or .npz;"
                   " default: the shipped 200 CIFAR-10 test photos")
    ref = e.add_mutually_exclusive_group()
    ref.add_argument("--reference", metavar="CKPT", help="fp32 PyTorch checkpoint to measure agreement against;"
                     " default: the checkpoint an artifact's manifest names")
    ref.add_argument("--no-reference", action="store_true", help="skip the agreement measurement")
    e.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per runtime call (fixed-batch artifacts loop)")
    e.add_argument("-o", "--output", metavar="RESULTS.json",
                   help="also write the results JSON here (for edgerep check)")
    e.add_argument("--sensitivity", action="store_true",
                   help="per-layer int8 sensitivity of a checkpoint, sorted by the agreement each layer costs")
    e.add_argument("--sensitivity-mode", choices=["only", "all_but"], default="only",
                   help="--sensitivity: quantize one layer at a time (only, default) or all layers but one")
    e.add_argument("--calib", help="--sensitivity: images for activation ranges (default: the --images photos)")
    e.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    renamed(e, "--data", "--images")
    add_geometry(e)  # for checkpoints: an artifact's own manifest says how to feed it
    e.set_defaults(func=run)


def _sensitivity(args: argparse.Namespace, paths: list[Path], default_images: Path) -> int:
    from ..quant.sensitivity import checkpoint_sensitivity, format_sensitivity

    if len(paths) != 1:
        raise BadInputError("--sensitivity takes one PyTorch checkpoint (it quantizes the model layer by layer)")
    if not args.json:
        status(f"quantizing {paths[0].name} layer by layer ({args.sensitivity_mode})")
    report = checkpoint_sensitivity(paths[0], args.images or default_images, model=args.model,
                                    calibration=args.calib, mode=args.sensitivity_mode)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_sensitivity(report, top=20))
    return 0


def run(args: argparse.Namespace) -> int:
    from .. import defaults
    from ..accuracy.evaluate import Reference, evaluate, open_data, open_reference, open_subject, results_document
    from ..console import captured, progress_bar
    from ..fileio import writable_file, write_json

    data = open_data(args.images or defaults.default_images_dir())  # bad data fails before any model is loaded
    paths = expand(args.paths) if args.paths else [defaults.default_model_path()]
    if args.sensitivity:
        return _sensitivity(args, paths, defaults.default_images_dir())
    output = None if args.output is None else writable_file(args.output, example="results.json")
    fixed_ref = open_reference(args.reference, args.model, geometry(args)) if args.reference else None
    refs: dict[Path, Reference] = {}  # by checkpoint: each reference runs once for all its artifacts
    say = (lambda _msg: None) if args.json else status
    results = []
    for path in paths:
        with captured(f"loading {path.name}"):  # runtimes' load logs stay hidden unless --verbose or it fails
            subject = open_subject(path, args.model, geometry(args))
        reference = fixed_ref
        if reference is None and not args.no_reference and subject.source is not None:
            if subject.source not in refs:
                # the source checkpoint at the artifact's input size (it runs on the artifact's own inputs)
                size = {"input_size": [3, *subject.input_shape[1:]]}
                refs[subject.source] = open_reference(subject.source, subject.model, size)
            reference = refs[subject.source]
        say(f"evaluating {path.name} ({subject.target} {subject.precision}) on {data.count} images")
        with captured(f"evaluating {path.name}"):
            results.append(evaluate(subject, data, reference=reference, batch_size=args.batch_size,
                                    progress=None if args.json else progress_bar(path.name)))
    doc = results_document(results, data)
    if output is not None:
        write_json(output, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_results(results, data.describe()))
        if output is not None:
            print(f"results written to {output}")
    return 0


def expand(paths: list[str]) -> list[Path]:
    """Artifacts, checkpoints and folders of artifacts -> the files to evaluate, in order, once each.

    A manifest stands for its artifact, so ``edgerep eval edgerep-out/*`` works as well as ``edgerep-out/``.
    """
    from ..export.targets import artifact_suffixes

    suffixes = artifact_suffixes()
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.suffix == ".json" and Path(p.name[:-5]).suffix in suffixes:
            p = p.with_name(p.name[:-5])
        if p.is_dir() and p.suffix not in suffixes:
            found = sorted(c for c in p.iterdir() if c.suffix in suffixes and not c.name.startswith("."))
            if not found:
                raise BadInputError(f"folder {p} holds no artifacts ({', '.join(suffixes)}); export some with"
                                    " edgerep export, or name the files")
            out += found
        elif not p.exists():
            raise BadInputError(f"{p} does not exist; give an artifact, a checkpoint or a folder of artifacts")
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def format_results(results: list, data: str) -> str:
    from ..tables import human, table

    rows = []
    for r in results:
        a = r.agreement
        rows.append((
            Path(r.path).name, r.target, r.precision, _pct(r.top1), _pct(r.top5),
            "" if a is None else f"{a.top1:.3f}", "" if a is None else f"{a.cosine:.6f}",
            "" if a is None else f"{a.kl:.2g}", human(r.size_bytes, "B"),
        ))
    lines = [table(["artifact", "target", "precision", "top-1", "top-5", "agree top-1", "cosine", "KL", "size"],
                   rows, right={3, 4, 5, 6, 7, 8}), "", f"data: {data}"]
    refs = sorted({r.agreement.reference for r in results if r.agreement is not None})
    if refs:
        lines.append("agreement with fp32 PyTorch: " + ", ".join(refs))
    lines += [f"note: {Path(r.path).name}: {n}" for r in results for n in r.notes]
    return "\n".join(lines)




def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"
