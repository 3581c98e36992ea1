"""int8 top-1 through each target's own runtime, fp32 vs int8, on held-out CIFAR-10 test photos, per prepare variant.

    nice -n 10 python bench/int8_accuracy.py --out bench/results/int8_accuracy.json \
        [--models edgerep/data/models/repghostnet_050_cifar10.pt,...] [--targets onnx,tflite,executorch,coreml] \
        [--variants plain,default,adaround,budget2] [--calib 512] [--test 2000]

Calibration: ``--calib`` photos spread evenly over shared/data/cifar10/train; evaluation: ``--test`` photos spread
evenly over shared/data/cifar10/test minus the 200 shipped ones (0000-0019 of each class), so the two sets are
disjoint and neither was used to pick anything (prepare's own held-out part is a quarter of the calibration
photos). Every artifact is built by the backend (``backend.export``, no validation floor, so a bad variant is
measured rather than refused) and run by ``backend.run``: onnxruntime, LiteRT, ExecuTorch, Core ML's MIL program.
Variants are target options: plain = no equalization / bias correction (and 8-bit ONNX weights); eqbc = both on;
default = the target's defaults; adaround = defaults + AdaRound (100 steps per layer); budget0 / budget2 / auto =
defaults with int8_budget=0 / 2 / auto (onnx, executorch, coreml);
percentile / entropy = defaults with that activation-range method (onnx; percentile also tflite, coreml);
percentile_eqbc = percentile with equalization and bias correction asked for (each still judged); sym / asym /
unsigned (+ _float) = defaults with that Core ML activation scheme, logits rounded to int8 (or float); fp16 = the
target's fp16 artifact (Core ML W8A8 computes in fp16 between its quantized ops). A variant whose options (or
precision) a target does not have is skipped for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgerep.accuracy.evaluate import open_checkpoint
from edgerep.backends import ExportRequest, get_backend
from edgerep.export.targets import get_target
from edgerep.images import list_images, load_images
from edgerep.proof.numerics import closeness, top1_accuracy, top1_change
from edgerep.reparam import reparameterize

SHARED = Path(os.environ.get("EDGEREP_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MODELS = ["edgerep/data/models/repghostnet_050_cifar10.pt", "edgerep/data/models/repvgg_a0_narrow_cifar10.pt"]
VARIANTS = {
    "plain": {"equalize": False, "bias_correction": False},
    "default": {},
    "fp16": {},  # the target's fp16 artifact: how much of an int8 loss fp16 compute alone explains (Core ML W8A8)
    "adaround": {"adaround": True, "adaround_iterations": 100},
    "budget0": {"int8_budget": 0},
    "budget2": {"int8_budget": 2},
    "auto": {"int8_budget": "auto"},
    "eqbc": {"equalize": True, "bias_correction": True},
    "percentile": {"calibrate_method": "percentile"},
    "entropy": {"calibrate_method": "entropy"},
    "percentile_eqbc": {"calibrate_method": "percentile", "equalize": True, "bias_correction": True},
    # coreml activation schemes, each with the logits rounded to int8 or left float (float_output)
    **{f"{scheme}{tail}": {"activations": name, "float_output": fo}
       for scheme, name in (("sym", "symmetric"), ("asym", "asymmetric"), ("unsigned", "unsigned"))
       for tail, fo in (("", False), ("_float", True))},
}
SHIPPED_PER_CLASS = 20  # test/<class>/0000..0019.jpg are shipped in the package (edgerep/data/cifar10)


def cpu() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), platform.processor())
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return {"model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "cores": os.cpu_count()}


def spread(files: list, labels: list, n: int) -> tuple[list, list]:
    idx = np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)
    return [files[i] for i in idx], [labels[i] for i in idx]


def data(pre, calib_n: int, test_n: int):
    train = list_images(SHARED / "data/cifar10/train")
    cf, _ = spread(train.files, train.labels, calib_n)
    test = list_images(SHARED / "data/cifar10/test")
    keep = [i for i, f in enumerate(test.files) if int(Path(f).stem) >= SHIPPED_PER_CLASS]
    tf, tl = spread([test.files[i] for i in keep], [test.labels[i] for i in keep], test_n)
    return load_images(cf, pre).images, load_images(tf, pre).images, torch.tensor(tl)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default="onnx,tflite,executorch,coreml")
    ap.add_argument("--variants", default="plain,default,adaround,budget2")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/int8_accuracy.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    command = "python bench/int8_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "cpu": cpu(), "torch": torch.__version__, "calibration": f"{args.calib} of cifar10/train (evenly spread)",
              "test": f"{args.test} of cifar10/test minus the 200 shipped (evenly spread)", "rows": []}
    out = Path(args.out)

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)

    for ck in args.models.split(","):
        subject = open_checkpoint(ck, None)
        model = reparameterize(subject.module)
        calib, test, labels = data(subject.preprocess, args.calib, args.test)
        with torch.no_grad():
            ref = torch.cat([model(test[i : i + 256]) for i in range(0, len(test), 256)])
        top1_torch = top1_accuracy(ref, labels)
        print(f"{subject.model}: torch fp32 top-1 {top1_torch:.4f} on {len(test)}", flush=True)
        for target in args.targets.split(","):
            tgt, backend = get_target(target), get_backend(target)
            plan = [("fp32", {})] + [(v, VARIANTS[v]) for v in args.variants.split(",")
                                     if all(k in tgt.options for k in VARIANTS[v])
                                     and (v != "fp16" or "fp16" in tgt.precisions)]
            for variant, given in plan:
                precision = variant if variant in ("fp32", "fp16") else "int8"
                opts = dict(given)
                if variant == "plain" and "reduce_range" in tgt.options:
                    opts["reduce_range"] = False
                if target == "onnx":
                    opts["exporter"] = "torchscript"  # keeps module weight names (keep_fp / int8_budget find nodes)
                row = {"model": subject.model, "target": target, "variant": variant, "precision": precision,
                       "options": opts, "top1_torch_fp32": top1_torch}
                t0 = time.perf_counter()
                tmp = Path(tempfile.mkdtemp(prefix="int8acc-"))
                try:
                    path = tmp / f"m{backend.suffix}"
                    info = backend.export(model, ExportRequest((1, *test.shape[1:]), precision, calib, "nchw",
                                                               tgt.resolve_options(opts)), path)
                    row["export_s"] = round(time.perf_counter() - t0, 1)
                    o = torch.from_numpy(np.asarray(backend.run(path, test.numpy()))).reshape(len(test), -1)
                    near = closeness(ref, o)
                    change, se = top1_change(ref, o, labels)  # paired: its error counts changed predictions only
                    row |= {"top1": top1_accuracy(o, labels), "top1_change": change, "top1_change_se": se,
                            "agreement": near.top1, "cosine": near.cosine,
                            "transforms": info.quantization.get("transforms"),
                            "weights": info.quantization.get("weights")}
                except Exception as exc:  # noqa: BLE001 - a failing variant is a result too
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                row["seconds"] = round(time.perf_counter() - t0, 1)
                result["rows"].append(row)
                save()
                print(json.dumps({k: row.get(k) for k in ("model", "target", "variant", "top1", "top1_change",
                                                          "top1_change_se", "agreement",
                                                          "cosine", "seconds", "error")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
