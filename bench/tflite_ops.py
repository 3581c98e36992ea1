"""Single layers of RepGhostNet's early, high-resolution blocks in LiteRT (XNNPACK), fp32 vs int8, 1 thread.

    python bench/tflite_ops.py --rounds 7 --out bench/results/int8_ops_tflite.json

Each case is one layer (random weights, He-normal) exported alone with channels-last input and output (no
TRANSPOSE in the file), fp32 by litert-torch and int8 by edgerep's PT2E path (minmax observer, 16 random
calibration inputs, int8 in and out); every file is timed in one interleaved run on the thread-CPU clock. It
answers which op kinds int8 does not speed up here: the cases are the shapes of RepGhostNet-1.0x's first blocks
at 224 px (1x1 convs, 3x3 depthwise convs with and without the explicit PAD a stride-2 symmetric padding
becomes, a residual add).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from edgerep.backends import tflite
from edgerep.export.manifest import tool_versions
from edgerep.profile.cpu import describe_cpu
from edgerep.quant.speed import thread_cpu_samples


class _NHWC(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layer(image.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class _PlusInput(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


def _dw(c: int, stride: int = 1, pad: int = 1, relu: bool = True) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, 3, stride, pad, groups=c), *([nn.ReLU()] if relu else []))


def _pw(ci: int, co: int, relu: bool = True) -> nn.Module:
    return nn.Sequential(nn.Conv2d(ci, co, 1), *([nn.ReLU()] if relu else []))


CASES: dict[str, tuple[Callable[[], nn.Module], int, int]] = {  # name: (layer factory, input channels, input size)
    "stem conv3x3 s2 3->16 +relu @224": (lambda: nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU()), 3, 224),
    "conv1x1 16->16 +relu @112": (lambda: _pw(16, 16), 16, 112),
    "conv1x1 16->48 +relu @112": (lambda: _pw(16, 48), 16, 112),
    "conv1x1 48->24 @56": (lambda: _pw(48, 24, False), 48, 56),
    "conv1x1 24->72 +relu @56": (lambda: _pw(24, 72), 24, 56),
    "dw3x3 16 +relu @112": (lambda: _dw(16), 16, 112),
    "dw3x3 48 +relu @112": (lambda: _dw(48), 48, 112),
    "dw3x3 24 @56": (lambda: _dw(24, relu=False), 24, 56),
    "dw3x3 72 +relu @56": (lambda: _dw(72), 72, 56),
    "dw3x3 s2 pad1 48 @112 (explicit PAD)": (lambda: _dw(48, 2, 1, False), 48, 112),
    "dw3x3 s2 pad0 48 @113 (no PAD)": (lambda: _dw(48, 2, 0, False), 48, 113),
    "conv1x1 16->16 + input @112 (residual add)": (lambda: _PlusInput(16), 16, 112),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    started, t0 = datetime.now(UTC), time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgerep-ops-") as tmp:
        files = {}
        for i, (name, (make, c, size)) in enumerate(CASES.items()):
            layer = make().eval()
            for m in layer.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, (2.0 / m.weight[0].numel()) ** 0.5)
            wrapped = _NHWC(layer).eval()
            x = torch.randn(16, size, size, c)
            x = x if c == 3 else x.relu()  # inner layers see post-ReLU activations
            for precision in ("fp32", "int8"):
                path = Path(tmp) / f"{i:02d}-{precision}.tflite"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    edge = (tflite._convert(wrapped, tflite.NCHW_INPUT, x[:1]) if precision == "fp32" else
                            tflite._convert_int8(wrapped, tflite.NCHW_INPUT, x[:1], x, "minmax", False))
                    with tflite._quiet():
                        edge.export(str(path))
                files[(name, precision)] = str(path)
            rows.append({"case": name, "int8_ops": sorted(
                o["op_name"] for o in tflite._interpreter(Path(files[(name, "int8")]))._get_ops_details()
                if o["op_name"] != "DELEGATE")})
        samples = thread_cpu_samples(files, rounds=args.rounds, per_round=10, warmup=3)
    for r in rows:
        for p in ("fp32", "int8"):
            v = sorted(1000 * t for t in samples[(r["case"], p)])
            r[f"{p}_us"] = {"median": round(statistics.median(v), 1), "p10": round(v[len(v) // 10], 1),
                            "p90": round(v[(9 * len(v)) // 10], 1), "n": len(v)}
        r["speedup"] = round(r["fp32_us"]["median"] / r["int8_us"]["median"], 3)
        print(f"{r['case']:>44}  fp32 {r['fp32_us']['median']:7.1f} us  int8 {r['int8_us']['median']:7.1f} us"
              f"  {r['speedup']:.2f}x")
    report = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - t0, 1),
        "cpu": describe_cpu(), "tools": tool_versions(["litert-torch", "ai-edge-litert", "torchao"]),
        "settings": {"threads": 1, "clock": "thread-cpu", "rounds": args.rounds, "per_round": 10, "warmup": 3,
                     "layout": "NHWC in and out", "int8": "PT2E per-channel weights, minmax, int8 in/out"},
        "meaning": "median microseconds per call of a one-layer file; speedup = fp32 / int8",
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
