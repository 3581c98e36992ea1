"""Export zoo models to every target and precision, validated, and collect the errors per (model, target, precision).

    python bench/export_zoo.py repvgg_a0 mobileone_s0 --calib ../shared/data/imagenet-sample \
        --out bench/results/export_zoo.json

Models get random weights and random BN statistics (edgerep.numerics.randomize_bn), so the numbers measure
how faithfully each artifact reproduces the PyTorch deploy model, not accuracy (and with random weights the
output barely depends on the input: int8 agreement on them is easy; judge int8 on the trained shipped model).
Rows that fail validation are recorded with their error, not dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgerep.api import preprocess_of
from edgerep.errors import EdgerepError, VerificationError
from edgerep.export import export
from edgerep.numerics import randomize_bn
from edgerep.reparam import reparameterize
from edgerep.zoo import create_model

PLAN = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"),
        ("coreml", "fp32"), ("coreml", "fp16"), ("coreml", "palettize6")]


def export_model(name: str, calib: str, out_dir: Path, plan=PLAN) -> list[dict]:
    torch.manual_seed(0)
    model = reparameterize(randomize_bn(create_model(name), torch.Generator().manual_seed(0)).eval())
    pre = preprocess_of(name)
    rows = []
    for target, precision in plan:
        t0 = time.perf_counter()
        row = {"model": name, "target": target, "precision": precision}
        try:
            r = export(model, name=name, target=target, precision=precision, input_size=(3, *pre.size),
                       output_dir=out_dir, preprocess=pre, calibration=calib, validation=calib)
            photos = next(s for s in r.validation.sets if s.kind == "images")
            row |= {"status": "validated", "size_bytes": r.size_bytes, "tolerance": r.validation.tolerance,
                    "max_abs": photos.max_abs, "rel": photos.rel, "cosine": photos.cosine,
                    "top1_agreement": photos.top1_agreement,
                    "rel_random": max(s.rel for s in r.validation.sets if s.kind == "random")}
        except VerificationError as exc:
            row |= {"status": "failed", "error": str(exc)}
        except EdgerepError as exc:
            row |= {"status": "error", "error": str(exc)}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--calib", required=True, help="photo folder used for calibration and validation")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += export_model(name, args.calib, Path(tmp))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    bad = [r for r in rows if r["status"] != "validated"]
    print(f"{len(rows) - len(bad)} of {len(rows)} artifacts validated")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
