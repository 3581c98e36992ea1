"""MobileNetV2-MSGC static masks: keep ratio vs executed MACs vs agreement with the dynamic form vs latency.

    python bench/msgc_static.py --out bench/results/msgc_static.json

The checkpoint (default: the original repository's layout fixture, random weights with gates that keep
about half the channels per image) is converted to the dynamic form (exact) and to static forms whose
masks are chosen on calibration photos (even-numbered files of the folder); agreement with the dynamic
form is measured on the other, held-out photos: relative output error, mean cosine, top-1 agreement, and
how many per-image gate decisions the fixed masks reproduce. MACs are those executed (edgerep's aten-level
count of the form that runs), not mask averages. Latency: batch 1, median of interleaved runs, one thread,
torch eager and onnxruntime (each ONNX file validated by edgerep.export.pipeline against its torch form first).
Timings on a shared machine are noisy: compare forms within one run, not across runs.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from edgerep.checkpoints import preprocess_of
from edgerep.checkpoints.load import load_model
from edgerep.images import list_images, load_images
from edgerep.msgc import calibrate, select_channels, to_dynamic, to_static
from edgerep.proof.metrics import count_macs, count_params, interleaved_times
from edgerep.proof.numerics import closeness, measure_bn_statistics, output_error

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEREP_SHARED", ROOT.parent / "shared"))
DEFAULT_CKPT = SHARED / "fixtures" / "checkpoints" / "official_msgc_mobilenetv2_noatt.pt"
DEFAULT_IMAGES = SHARED / "data" / "imagenet-sample"
MODEL = "mobilenetv2_msgc"


def gate_agreement(kept: list[list[torch.Tensor]], heldout: list) -> tuple[float, float]:
    """(share of held-out per-image gate decisions the fixed masks reproduce, share the fixed masks keep)."""
    agree = total = on = 0.0
    for per_head, stats in zip(kept, heldout):
        fixed = torch.zeros_like(stats.frequency)
        for h, k in enumerate(per_head):
            fixed[h, k] = 1.0
        agree += (fixed * stats.frequency + (1 - fixed) * (1 - stats.frequency)).sum().item()
        on += fixed.sum().item()
        total += fixed.numel()
    return agree / total, on / total


@torch.no_grad()
def compare(reference: torch.Tensor, out: torch.Tensor) -> dict:
    """Agreement of ``out`` with ``reference``; ``centered_cosine`` leaves out the reference's mean over the
    images, so a form that outputs a constant near that mean scores ~0 there however high its ``cosine``."""
    mean = reference.mean(0, keepdim=True)
    near = closeness(reference, out)
    return {
        "rel": output_error(reference, out).rel,
        "cosine": near.cosine,
        "centered_cosine": closeness(reference - mean, out - mean).cosine,
        "top1_agreement": near.top1,
    }


@torch.no_grad()
def agreement_table(
    model: nn.Module, calib: torch.Tensor, heldout: torch.Tensor, choices: list[tuple[str, float]]
) -> tuple[list[dict], dict[str, nn.Module]]:
    """The dynamic form and each static form (with and without bias correction) compared with the dynamic
    form on ``heldout``; also returns the (bias-corrected) forms by label."""
    stats, held_stats = calibrate(model, calib), calibrate(model, heldout)
    dynamic = to_dynamic(model)
    dyn_out = dynamic(heldout)
    kept_share = sum(s.frequency.sum().item() for s in held_stats) / sum(s.frequency.numel() for s in held_stats)
    vs_train = output_error(model(heldout), dyn_out).rel
    rows = [{"form": "dynamic", "keep_ratio": None, "threshold": None, "gate_agreement": 1.0,
             "kept_share": kept_share, **compare(dyn_out, dyn_out), "vs_train_rel": vs_train}]
    forms: dict[str, nn.Module] = {"dynamic": dynamic}
    for kind, value in choices:
        label = _label(kind, value)
        forms[label] = to_static(model, stats, **{kind: value})
        plain = to_static(model, stats, **{kind: value}, bias_correction=False)(heldout)
        agree, kept = gate_agreement(select_channels(stats, **{kind: value}), held_stats)
        uncorrected = {f"{k}_no_bias_correction": v for k, v in compare(dyn_out, plain).items()}
        rows.append({"form": label, "keep_ratio": value if kind == "keep_ratio" else None,
                     "threshold": value if kind == "threshold" else None, "gate_agreement": agree,
                     "kept_share": kept, **compare(dyn_out, forms[label](heldout)), **uncorrected})
    return rows, forms


def _label(kind: str, value: float) -> str:
    return f"static-{'keep' if kind == 'keep_ratio' else 'thr'}{value:g}"


def onnx_latency(forms: dict[str, nn.Module], images: torch.Tensor, out_dir: Path, rounds: int) -> dict[str, dict]:
    """Export each form to ONNX (validated on 16 of ``images``), then time onnxruntime on one image, one thread."""
    import onnxruntime as ort

    from edgerep.export.pipeline import export

    pre = preprocess_of(MODEL)
    sessions, info = {}, {}
    for label, net in forms.items():
        t0 = time.perf_counter()
        result = export(net, name=f"msgc-{label}", target="onnx", precision="fp32", input_size=(3, *pre.size),
                        output_dir=out_dir, preprocess=pre, validation=images[:16])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sessions[label] = ort.InferenceSession(str(result.artifact), opts, providers=["CPUExecutionProvider"])
        info[label] = {"onnx_validated": result.validation.passed, "onnx_worst_rel": max(
            s.rel for s in result.validation.sets), "onnx_export_s": round(time.perf_counter() - t0, 1)}
        print(f"  onnx {label}: validated, worst rel {info[label]['onnx_worst_rel']:.2g}", flush=True)
    x = images[:1].numpy()
    calls = {k: functools.partial(s.run, None, {s.get_inputs()[0].name: x}) for k, s in sessions.items()}
    times = interleaved_times(calls, rounds=rounds)
    for k, v in times.items():
        info[k]["onnxruntime_ms"] = statistics.median(v)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="photos: even files calibrate, odd validate")
    p.add_argument("--keep-ratios", default="1.0,0.75,0.5,0.25")
    p.add_argument("--thresholds", default="0.5", help="majority-vote style static forms (empty: none)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX exports and onnxruntime timings")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    model, info = load_model(MODEL, args.checkpoint)
    files = list_images(args.images).files
    pre = preprocess_of(MODEL)
    calib = load_images(files[0::2], pre).images
    heldout = load_images(files[1::2], pre).images
    print(f"{MODEL} from {args.checkpoint.name} ({info.layout} layout); {len(calib)} calibration,"
          f" {len(heldout)} held-out photos from {args.images.name}/", flush=True)

    choices = [("keep_ratio", float(r)) for r in args.keep_ratios.split(",") if r]
    choices += [("threshold", float(t)) for t in args.thresholds.split(",") if t]
    rows, forms = agreement_table(model, calib, heldout, choices)
    size = (3, *pre.size)
    for r in rows:
        r.update(macs=count_macs(forms[r["form"]], size), params=count_params(forms[r["form"]]))
    train_macs = count_macs(model, size)
    print("agreement with BatchNorm statistics re-estimated on the calibration photos", flush=True)
    recalibrated_model = measure_bn_statistics(copy.deepcopy(model), calib, batch=25)
    recalibrated, _ = agreement_table(recalibrated_model, calib, heldout, choices)

    with torch.no_grad():
        torch_ms = {k: statistics.median(v) for k, v in interleaved_times(
            {"train": functools.partial(model, heldout[:1]),
             **{k: functools.partial(m, heldout[:1]) for k, m in forms.items()}}, rounds=args.rounds).items()}
    for r in rows:
        r["torch_ms"] = torch_ms[r["form"]]
    if not args.no_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            ort_info = onnx_latency(forms, heldout, Path(tmp), args.rounds)
        for r in rows:
            r.update(ort_info[r["form"]])

    result = {
        "command": "python bench/msgc_static.py" + (f" --out {args.out}" if args.out else ""),
        "checkpoint": str(args.checkpoint.name), "checkpoint_sha256": info.sha256, "layout": info.layout,
        "images": {"folder": args.images.name, "calibration": len(calib), "heldout": len(heldout)},
        "input": list(size), "torch": torch.__version__, "threads": 1,
        "train_macs": train_macs, "train_torch_ms": torch_ms["train"],
        "note": "weights are random (the fixture's), so agreement measures how well fixed masks imitate the "
                "per-image gates, not accuracy; latency medians on a shared 2-core host are noisy",
        "seconds": round(time.perf_counter() - started, 1), "forms": rows,
        "bn_recalibrated": {"what": "the same forms and images after the checkpoint's BatchNorm statistics are "
                            "re-estimated on the calibration photos (input-dependent outputs); agreement only",
                            "forms": recalibrated},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.out)
    print(f"\ntrain form: {train_macs / 1e6:.1f} M MACs, torch {torch_ms['train']:.1f} ms")
    print(f"{'form':<16} {'MACs':>8} {'kept':>5} {'gates ok':>8} {'rel':>7} {'cosine':>8} {'c-cos':>7} {'top-1':>6}"
          f" {'torch ms':>8} {'ort ms':>7}")
    for r in rows:
        ort_ms = f"{r['onnxruntime_ms']:7.1f}" if "onnxruntime_ms" in r else "      -"
        print(f"{r['form']:<16} {r['macs'] / 1e6:7.1f}M {r['kept_share']:5.2f} {r['gate_agreement']:8.3f}"
              f" {r['rel']:7.3f} {r['cosine']:8.5f} {r['centered_cosine']:7.3f} {r['top1_agreement']:6.2f}"
              f" {r['torch_ms']:8.1f} {ort_ms}")
    print("\nBN statistics re-estimated on the calibration photos (agreement with the dynamic form):")
    print(f"{'form':<16} {'gates ok':>8} {'rel':>7} {'cos':>7} {'c-cos':>7} {'top-1':>6}   without bias correction:"
          f" {'rel':>7} {'c-cos':>7} {'top-1':>6}")
    for r in recalibrated[1:]:  # the first row is the dynamic form itself
        print(f"{r['form']:<16} {r['gate_agreement']:8.3f} {r['rel']:7.3f} {r['cosine']:7.4f}"
              f" {r['centered_cosine']:7.3f} {r['top1_agreement']:6.2f}   {'':<24} {r['rel_no_bias_correction']:7.3f}"
              f" {r['centered_cosine_no_bias_correction']:7.3f} {r['top1_agreement_no_bias_correction']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
