"""onnxruntime int8 vs fp32 on this host, per zoo family at 224 px, 1 thread, for several int8 graph forms.

    python bench/int8_speed.py --out bench/results/int8_speed.json [--models repvgg_a0,mobileone_s0,...]
        [--variants qdq_s8,qdq_u8,qdq_conv_u8,qop_u8] [--rounds 15]

Each model (random weights; speed does not depend on them) is exported fp32 by edgerep's ONNX backend, then
quantized per variant with onnxruntime's ``quantize_static`` (per-channel symmetric s8 weights, 16 photos of
calibration, logits left float as edgerep exports them):
- ``qdq_s8``: QDQ, s8 activations: edgerep's int8 before this bench;
- ``qdq_u8``: QDQ, u8 (asymmetric) activations: the pairing onnxruntime's x86 kernels are written for;
- ``qdq_conv_u8``: u8, only Conv / Gemm / pooling quantized: add, concat, mul and hard-sigmoid (RepGhost's SE)
  stay float, so no requantization around them;
- ``qop_u8``: QOperator form (QLinearConv ...), u8 activations.
Every session runs 1 intra-op thread; rounds interleave all variants of a model (each round: every session
``per_round`` times, in a rotating order), so load from other processes hits all alike; medians, p10/p90 and
the CPU are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgerep.backends import ExportRequest, get_backend
from edgerep.backends.onnx import float_output
from edgerep.profile.cpu import describe_cpu
from edgerep.zoo import create_model

SHARED = Path(os.environ.get("EDGEREP_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MODELS = ["repvgg_a0", "mobileone_s0", "repghostnet_100", "mobilenetv2_100"]
VARIANTS = {
    "qdq_s8": dict(fmt="QDQ", act="QInt8", ops=None),
    "qdq_u8": dict(fmt="QDQ", act="QUInt8", ops=None),
    "qdq_conv_u8": dict(fmt="QDQ", act="QUInt8", ops=["Conv", "Gemm", "MaxPool", "GlobalAveragePool", "AveragePool"]),
    "qop_u8": dict(fmt="QOperator", act="QUInt8", ops=None),
}


class Reader:
    def __init__(self, x: np.ndarray) -> None:
        self.it = iter([{"input": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.it, None)


def quantize(fp32: Path, dest: Path, images: np.ndarray, fmt: str, act: str, ops) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dest.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    kwargs = {"op_types_to_quantize": ops} if ops else {}
    quantize_static(str(pre), str(dest), Reader(images), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                    activation_type=getattr(QuantType, act), weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False}, **kwargs)
    if fmt == "QDQ":
        onnx.save(float_output(onnx.load(str(dest))), str(dest))


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def stats(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=10, method="inclusive")
    med = statistics.median(ms)
    return {"median_ms": round(med, 3), "p10_ms": round(q[0], 3), "p90_ms": round(q[8], 3),
            "spread": round((q[8] - q[0]) / med, 3), "n": len(ms)}


def measure(model_name: str, variants: list[str], images: np.ndarray, rounds: int, per_round: int) -> dict:
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    from edgerep.reparam import reparameterize

    model = reparameterize(model)
    backend = get_backend("onnx")
    with tempfile.TemporaryDirectory(prefix="int8speed-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        backend.export(model, ExportRequest((1, 3, 224, 224), "fp32", None, "nchw", {"opset": 18,
                       "exporter": "dynamo", "simplify": True}), fp32)
        paths = {"fp32": fp32}
        for v in variants:
            paths[v] = Path(tmp) / f"{v}.onnx"
            quantize(fp32, paths[v], images, **VARIANTS[v])
        sessions = {k: session(p) for k, p in paths.items()}
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        x = {"input": images[:1]}
        for s in sessions.values():  # warm-up
            for _ in range(3):
                s.run(None, x)
        times: dict[str, list[float]] = {k: [] for k in sessions}
        keys = list(sessions)
        for r in range(rounds):
            for k in keys[r % len(keys):] + keys[: r % len(keys)]:
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    sessions[k].run(None, x)
                    times[k].append((time.perf_counter() - t0) * 1e3)
    out = {k: {**stats(v), "size_bytes": sizes[k]} for k, v in times.items()}
    for k in variants:
        out[k]["speedup_vs_fp32"] = round(out["fp32"]["median_ms"] / out[k]["median_ms"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--out", default="bench/results/int8_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from edgerep.checkpoints import preprocess_of
    from edgerep.images import list_images, load_images

    import onnxruntime

    files = list_images(SHARED / "data/imagenet-sample").files[::12][:16]
    images = load_images(files, preprocess_of("repvgg_a0")).images.numpy()
    result = {"cpu": describe_cpu(), "onnxruntime": onnxruntime.__version__, "threads": 1, "input": [1, 3, 224, 224],
              "load_average_at_start": os.getloadavg(), "rounds": args.rounds, "per_round": args.per_round,
              "models": {}}
    out = Path(args.out)
    for name in args.models.split(","):
        t0 = time.perf_counter()
        result["models"][name] = measure(name, args.variants.split(","), images, args.rounds, args.per_round)
        result["models"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        result["load_average_at_end"] = os.getloadavg()
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)
        print(name, json.dumps({k: (v.get("median_ms"), v.get("speedup_vs_fp32")) for k, v in
                                result["models"][name].items() if isinstance(v, dict)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
