"""Export zoo models to every target and precision, validated, and collect the errors per (model, target, precision).

    nice -n 10 python bench/export_zoo.py repvgg_a0 mobileone_s0 --calib ../shared/data/imagenet-sample \
        --out bench/results/export_zoo.json [--plan coreml:int8,executorch:fp32] [--bn random]

Models get random weights. Their BatchNorms are then *calibrated* (default, ``--bn calibrated``): random affine
parameters (edgerep.proof.numerics.randomize_bn), running statistics measured on the photos in train mode, as training
leaves them. With random running statistics instead (``--bn random``) activations grow layer after layer: a
random-weight MobileOne-S0 reaches outputs of ~2e8, beyond float16's 65504, so every fp16 artifact of it is NaN
although the conversion is right: that measures the random init, not the exporter. Calibrated BN keeps the
activations in the range a trained model has, and the fusion is just as non-trivial.

The numbers measure how faithfully each artifact reproduces the PyTorch deploy model, not accuracy (with
random weights the output barely depends on the input, so agreement floors are easier or harder to meet than
on a trained model; judge int8 on the trained shipped model). Rows that fail validation are recorded with
their error, not dropped; ``ref_max`` is max |PyTorch output| on the photos: past float16's 65504 an fp16 artifact
overflows (NaN / inf) however right its conversion is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from edgerep.checkpoints import preprocess_of
from edgerep.errors import EdgerepError, VerificationError
from edgerep.export.pipeline import export
from edgerep.images import list_images, load_images
from edgerep.proof.numerics import randomize_bn
from edgerep.reparam import reparameterize
from edgerep.zoo import create_model

PLAN = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"),
        ("coreml", "fp32"), ("coreml", "fp16"), ("coreml", "palettize6"), ("coreml", "int8"),
        ("executorch", "fp32"), ("executorch", "int8")]
BN_IMAGES = 32  # photos whose batch statistics become the BN running statistics


def calibrate_bn(model: nn.Module, images: Tensor, batch: int = 16) -> nn.Module:
    """Set every BN's running mean / var to the cumulative statistics of ``images`` (train-mode passes), then eval."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(images[i : i + batch])
    return model.eval()


def deploy_model(name: str, calib: str, bn: str) -> nn.Module:
    torch.manual_seed(0)
    model = randomize_bn(create_model(name), torch.Generator().manual_seed(0))
    if bn == "calibrated":
        files = list_images(calib).files
        step = max(1, len(files) // BN_IMAGES)
        calibrate_bn(model, load_images(files[::step][:BN_IMAGES], preprocess_of(name)).images)
    return reparameterize(model.eval())


def export_model(name: str, calib: str, out_dir: Path, plan=PLAN, bn: str = "calibrated") -> list[dict]:
    model = deploy_model(name, calib, bn)
    pre = preprocess_of(name)
    with torch.no_grad():
        ref_max = model(load_images(calib, pre).images).abs().max().item()
    rows = []
    for target, precision in plan:
        t0 = time.perf_counter()
        row = {"model": name, "bn": bn, "target": target, "precision": precision, "ref_max": ref_max}
        try:
            r = export(model, name=name, target=target, precision=precision, input_size=(3, *pre.size),
                       output_dir=out_dir, preprocess=pre, calibration=calib, validation=calib)
            photos = next(s for s in r.validation.sets if s.kind == "images")
            row |= {"status": "validated", "size_bytes": r.size_bytes, "tolerance": r.validation.tolerance,
                    "max_abs": photos.max_abs, "rel": photos.rel, "cosine": photos.cosine,
                    "top1_agreement": photos.top1_agreement,
                    "rel_random": max(s.rel for s in r.validation.sets if s.kind == "random")}
            shutil.rmtree(r.artifact) if r.artifact.is_dir() else r.artifact.unlink()  # keep only the numbers
        except VerificationError as exc:
            row |= {"status": "failed", "error": str(exc)}
            photos = next((s for s in exc.report.sets if s.kind == "images"), None) if exc.report else None
            if photos is not None:
                row |= {"rel": photos.rel, "cosine": photos.cosine, "top1_agreement": photos.top1_agreement}
        except EdgerepError as exc:
            row |= {"status": "error", "error": str(exc)}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def parse_plan(text: str | None) -> list[tuple[str, str]]:
    if not text:
        return PLAN
    return [tuple(item.split(":", 1)) for item in text.split(",")]  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--calib", required=True, help="photo folder used for BN statistics, calibration and validation")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plan", help="comma list of target:precision (default: every target and precision of PLAN)")
    p.add_argument("--bn", choices=["calibrated", "random"], default="calibrated",
                   help="BN running statistics: measured on the photos (default) or random (ill-conditioned)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    plan = parse_plan(args.plan)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += export_model(name, args.calib, Path(tmp), plan, args.bn)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    bad = [r for r in rows if r["status"] != "validated"]
    print(f"{len(rows) - len(bad)} of {len(rows)} artifacts validated")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
