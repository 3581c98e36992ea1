"""Where a LiteRT int8 RepGhostNet spends its time against fp32: each piece of the network exported alone, timed.

    python bench/tflite_pieces.py repghostnet_100 --rounds 7 --out bench/results/int8_pieces_repghost.json

ai-edge-litert's Python interpreter has no per-op profiler, so the deploy model is cut into the pieces its
forward runs in sequence (stem, every bottleneck ``blocks.i.j``, head) and each piece is exported by edgerep's
TFLite backend path (fp32: plain conversion; int8: the same PT2E quantizer, int8 input and int8 output so
pieces chain as they do inside the whole model, float logits for the head) with the activations of the shipped
photos at its input as calibration. All files are timed in one interleaved run (1 thread, thread-CPU clock);
the table gives fp32 / int8 ms per piece, the speed-up and each piece's op counts, so the pieces that keep the
whole model's speed-up low stand out. The whole model is timed in the same run in fp32, in int8 as litert-torch
writes it (the float-logits classifier left float) and in int8 as edgerep ships it (that classifier with int8
weights, ``tflite.int8_weights_everywhere``). Random weights with random BN statistics, as bench/export.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export import make_case

from edgerep.backends import tflite
from edgerep.export.manifest import tool_versions
from edgerep.profile.cpu import describe_cpu
from edgerep.quant.speed import thread_cpu_samples


class _Head(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.classifier(torch.flatten(m.act2(m.conv_head(m.global_pool(x))), 1))


def pieces(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """RepGhostNet's forward as a chain: stem, each bottleneck, head (timm's layout, edgerep.zoo.repghostnet)."""
    out: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(model.conv_stem, model.bn1, model.act1))]
    for i, stage in enumerate(model.blocks):
        out += [(f"blocks.{i}.{j}", block) for j, block in enumerate(stage)]
    return out + [("head", _Head(model))]


def tflite_ops(path: Path) -> dict[str, int]:
    """Op counts of a .tflite file, float ops of an int8 file marked ``(f32)``."""
    interp = tflite._interpreter(path)
    dtype = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    ops = Counter(o["op_name"] + ("(f32)" if dtype[o["outputs"][0]].__name__ == "float32" else "")
                  for o in interp._get_ops_details() if o["op_name"] != "DELEGATE")
    return dict(sorted(ops.items()))


def export_pieces(model: nn.Module, images: torch.Tensor, workdir: Path, say) -> list[dict]:
    rows = []
    x = images
    for i, (name, piece) in enumerate(pieces(model)):
        piece = piece.eval()
        last = name == "head"
        wrapped = tflite._NamedInput(piece).eval()
        sample = torch.zeros((1, *x.shape[1:]))
        row: dict = {"piece": name, "input": list(x.shape[1:])}
        for precision in ("fp32", "int8"):
            path = workdir / f"{i:02d}-{name}-{precision}.tflite"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if precision == "fp32":
                    edge = tflite._convert(wrapped, tflite.NCHW_INPUT, sample)
                else:
                    edge = tflite._convert_int8(wrapped, tflite.NCHW_INPUT, sample, x, "minmax", last)
                with tflite._quiet():
                    edge.export(str(path))
                if precision == "int8":  # what the backend does to every int8 file (the float-logits classifier)
                    path.write_bytes(tflite.int8_weights_everywhere(path)[0])
            row[f"{precision}_file"] = path
            row[f"{precision}_ops"] = tflite_ops(path)
        with torch.no_grad():
            x = piece(x)
        say(f"  {name}: exported")
        rows.append(row)
    return rows


def export_whole(model: nn.Module, images: torch.Tensor, workdir: Path) -> dict[str, Path]:
    """The whole model: fp32, int8 as litert-torch writes it (float classifier) and int8 as edgerep ships it."""
    wrapped = tflite._NamedInput(model.eval()).eval()
    sample = torch.zeros((1, *images.shape[1:]))
    files = {v: workdir / f"whole-{v}.tflite" for v in ("fp32", "int8 float classifier", "int8")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edges = {"fp32": tflite._convert(wrapped, tflite.NCHW_INPUT, sample),
                 "int8 float classifier": tflite._convert_int8(wrapped, tflite.NCHW_INPUT, sample, images, "minmax",
                                                               True)}
        for v, edge in edges.items():
            with tflite._quiet():
                edge.export(str(files[v]))
    files["int8"].write_bytes(tflite.int8_weights_everywhere(files["int8 float classifier"])[0])
    return files


def _spread(v: list[float]) -> dict:
    v = sorted(v)
    return {"median": round(statistics.median(v), 4), "p10": round(v[len(v) // 10], 4),
            "p90": round(v[(9 * len(v)) // 10], 4), "n": len(v)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a RepGhostNet zoo name, e.g. repghostnet_100")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=32, help="calibration photos")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started, t0 = datetime.now(UTC), time.perf_counter()
    case = make_case(args.model, args.size, args.images)
    with tempfile.TemporaryDirectory(prefix="edgerep-pieces-") as tmp:
        rows = export_pieces(case.deploy, case.images, Path(tmp), lambda s: print(s, file=sys.stderr))
        whole = export_whole(case.deploy, case.images, Path(tmp))
        files = {(r["piece"], p): str(r[f"{p}_file"]) for r in rows for p in ("fp32", "int8")}
        files.update({("whole", v): str(f) for v, f in whole.items()})
        samples = thread_cpu_samples(files, rounds=args.rounds, per_round=5, warmup=3)
    for r in rows:
        for p in ("fp32", "int8"):
            r[f"{p}_ms"] = _spread(samples[(r["piece"], p)])
            del r[f"{p}_file"]
        r["speedup"] = round(r["fp32_ms"]["median"] / r["int8_ms"]["median"], 3)
    whole_ms = {v: _spread(samples[("whole", v)]) for v in whole}
    whole_speedup = {v: round(whole_ms["fp32"]["median"] / whole_ms[v]["median"], 3) for v in whole if v != "fp32"}
    total = {p: round(sum(r[f"{p}_ms"]["median"] for r in rows), 4) for p in ("fp32", "int8")}
    report = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - t0, 1),
        "cpu": describe_cpu(), "tools": tool_versions(["litert-torch", "ai-edge-litert", "torchao"]),
        "settings": {"threads": 1, "clock": "thread-cpu", "rounds": args.rounds, "per_round": 5, "warmup": 3,
                     "size": args.size, "calibration_images": args.images, "observer": "minmax",
                     "weights": case.weights},
        "meaning": "per piece: median ms (1 thread) of the piece exported alone, fp32 and int8 (int8 in/out, "
                   "float logits for the head); speedup = fp32 / int8",
        "whole_model_ms": whole_ms, "whole_model_int8_speedup": whole_speedup, "sum_of_pieces_ms": total,
        "sum_speedup": round(total["fp32"] / total["int8"], 3), "pieces": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        print(f"{r['piece']:>12} {r['input']!s:>16}  fp32 {r['fp32_ms']['median']:.3f}  int8 "
              f"{r['int8_ms']['median']:.3f}  {r['speedup']:.2f}x")
    print(f"{'sum':>12} {'':>16}  fp32 {total['fp32']:.3f}  int8 {total['int8']:.3f}  {report['sum_speedup']:.2f}x")
    for v, ms in whole_ms.items():
        print(f"whole model {v:>22}: {ms['median']:.3f} ms (p10 {ms['p10']:.3f}, p90 {ms['p90']:.3f})"
              + (f"  {whole_speedup[v]:.2f}x" if v in whole_speedup else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
