"""Which layer hurts int8: quantize one conv / linear layer at a time (or all but one), rank by the damage.

    report = layer_sensitivity(deployed, images, labels, calibration=calib_images)
    print(format_sensitivity(report))

    report = checkpoint_sensitivity("ck.pt", "photos/")    # what `edgerep eval --sensitivity` runs

Simulated in PyTorch with the scheme the backends export (``fakequant``: symmetric per-channel int8
weights, the layer's input activation int8 per tensor over its calibrated range), so it is fast (one
forward pass over the images per layer) and the same for every target. ``mode="only"`` quantizes just
that layer: the drop is its own damage. ``mode="all_but"`` quantizes everything else: the gain over the
fully quantized model is what keeping that layer in float (``keep_fp``) would buy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import BadInputError
from ..proof.numerics import closeness, top1_accuracy
from ..tables import table
from . import fakequant
from .graph import layer_order
from .simulate import input_ranges, logits, quantized


@dataclass
class LayerResult:
    layer: str
    kind: str
    agreement: float  # top-1 match with the fp32 model
    top1: float | None
    agreement_change: float  # vs the reference point: fp32 (mode "only") or all quantized ("all_but")
    top1_change: float | None
    kl: float  # mean KL(fp32 || this) of the softmax outputs: orders layers whose agreement ties (few images)


@dataclass
class SensitivityReport:
    mode: str
    method: str
    images: int
    top1_fp32: float | None
    agreement_all: float  # every layer quantized
    top1_all: float | None
    layers: list[LayerResult] = field(default_factory=list)  # most harmful first

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    calibration: Tensor | None = None,
    mode: str = "only",
    method: str = "minmax",
    weight_bits: int = 8,
    batch: int = 256,
    candidates: list[str] | None = None,
) -> SensitivityReport:
    """Per-layer int8 sensitivity of ``model`` on ``images`` (see the module docstring), sorted worst first.

    ``candidates``: measure only these layers (every layer is still quantized in the reference point).
    """
    if mode not in ("only", "all_but"):
        raise BadInputError(f"sensitivity mode {mode!r} is unknown; use only or all_but")
    if method not in fakequant.RANGES:
        raise BadInputError(f"calibration method {method!r} is unknown; use one of {', '.join(fakequant.RANGES)}")
    if len(images) == 0:
        raise BadInputError("sensitivity needs at least one image")
    model = model.eval()
    calib = images if calibration is None else calibration
    names = layer_order(model, images[:1].float())
    modules = dict(model.named_modules())
    ranges = input_ranges(model, names, calib.float(), method, batch)
    ref = logits(model, images, batch)

    def measure(layers: list[str]) -> tuple[float, float | None, float]:
        with quantized(model, layers, ranges, weight_bits, last=names[-1]):
            out = logits(model, images, batch)
        near = closeness(ref, out)
        return near.top1, None if labels is None else top1_accuracy(out, labels), near.kl

    top1_fp32 = None if labels is None else top1_accuracy(ref, labels)
    agree_all, top1_all, _ = measure(names)
    base_agree, base_top1 = (1.0, top1_fp32) if mode == "only" else (agree_all, top1_all)
    results = []
    for name in names if candidates is None else [n for n in names if n in candidates]:
        agree, top1, kl = measure([name] if mode == "only" else [n for n in names if n != name])
        results.append(LayerResult(
            name, _kind(modules[name]), agree, top1, agree - base_agree,
            None if top1 is None or base_top1 is None else top1 - base_top1, kl,
        ))
    # "only": the most harmful layer loses the most; "all_but": the one worth keeping in float gains the most
    sign = 1 if mode == "only" else -1
    results.sort(key=lambda r: (sign * r.agreement_change, sign * (r.top1_change or 0.0), -sign * r.kl))
    return SensitivityReport(mode, method, len(images), top1_fp32, agree_all, top1_all, results)


def checkpoint_sensitivity(
    checkpoint: str | Path,
    data: str | Path,
    *,
    model: str | None = None,
    calibration: str | Path | None = None,
    mode: str = "only",
    method: str = "minmax",
) -> SensitivityReport:
    """``layer_sensitivity`` of a train- or deploy-form checkpoint (fused first) on an image folder or .npz.

    Class folders are matched to the checkpoint's labels by name (as ``edgerep eval`` does); activation
    ranges come from ``calibration`` (a folder) or else from ``data`` itself.
    """
    from ..accuracy.evaluate import label_map, open_checkpoint, open_data
    from ..reparam import reparameterize

    subject = open_checkpoint(checkpoint, model)  # model name, preprocessing and labels as `edgerep eval` reads them
    deployed = reparameterize(subject.module)
    source = open_data(data)
    images, labels = _load(source, subject)
    mapping, _ = label_map(source, subject.labels, subject.model)
    if labels is not None and mapping is not None:
        labels = torch.from_numpy(mapping)[labels]
    calib = None if calibration is None else _load(open_data(calibration), subject)[0]
    return layer_sensitivity(deployed, images, labels, calibration=calib, mode=mode, method=method)


def _load(data, subject) -> tuple[Tensor, Tensor | None]:
    parts = list(data.batches(subject.preprocess, 256))
    images = torch.cat([b[0] for b in parts])
    labels = None if parts[0][1] is None else torch.cat([b[1] for b in parts])
    return images, labels


def format_sensitivity(report: SensitivityReport, top: int | None = 15) -> str:
    """The report as a table, worst layers first (``top`` rows; None for all)."""
    what = "only this layer int8" if report.mode == "only" else "every layer int8 except this one"
    rows = [
        (i + 1, r.layer, r.kind, f"{r.agreement:.3f}", f"{r.agreement_change:+.3f}",
         "" if r.top1 is None else f"{r.top1:.3f}", "" if r.top1_change is None else f"{r.top1_change:+.3f}")
        for i, r in enumerate(report.layers[:top] if top else report.layers)
    ]
    head = (f"int8 sensitivity ({what}; {report.method} activation ranges; {report.images} images): every layer"
            f" int8 -> agreement {report.agreement_all:.3f}"
            + (f", top-1 {report.top1_fp32:.3f} -> {report.top1_all:.3f}" if report.top1_fp32 is not None else ""))
    body = table(["#", "layer", "kind", "agreement", "change", "top-1", "change"], rows, right={0, 3, 4, 5, 6})
    more = len(report.layers) - len(rows)
    return head + "\n" + body + (f"\n... {more} more layers (less sensitive)" if more > 0 else "")


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"linear {m.in_features}->{m.out_features}"
    k = "x".join(map(str, m.kernel_size))
    dw = " dw" if m.groups == m.in_channels == m.out_channels and m.groups > 1 else ""
    return f"conv {k}{dw} {m.in_channels}->{m.out_channels}"
