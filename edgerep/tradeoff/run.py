"""``edgerep bench``: deploy -> export -> validate -> evaluate -> profile, for several models, targets, devices.

Accuracy comes from the export's own validation pass: each artifact is run through its runtime on the
labelled images and compared with the PyTorch deploy model, so top-1 and agreement are those of the file
that ships. A failure at any stage keeps the row, marked with what failed, and the run goes on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..console import captured
from ..errors import BadInputError, EdgerepError
from .latency import Latency, latency
from .table import TradeoffRow, fill_speedups, mark_pareto

Progress = Callable[[str], None]


def model_source(spec: str, workdir: Path) -> tuple[str | None, Path, str]:
    """``NAME=CKPT``, a checkpoint path, or a bare zoo name (random weights: latency and agreement only).

    A bare name gets random BN statistics too: with fresh BNs a random network gives nearly the same logits for
    every image, and top-1 agreement of a quantized artifact then flips all at once on a rounding shift.
    """
    name, sep, path = spec.partition("=")
    if sep:
        return name or None, Path(path), ""
    if Path(spec).is_file():
        return None, Path(spec), ""
    from ..checkpoints.load import save_checkpoint
    from ..proof.numerics import randomize_bn
    from ..zoo import create_model, get_spec

    get_spec(spec)  # an unknown name is refused here, with suggestions
    torch.manual_seed(0)
    ckpt = workdir / f"{spec}-random.pt"
    model = randomize_bn(create_model(spec), torch.Generator().manual_seed(0)).eval()
    save_checkpoint(ckpt, model, model=spec)
    return spec, ckpt, "random weights"


def run_bench(
    models: list[str],
    plan: list[tuple[str, str]],
    devices: list[str],
    threads: list[int],
    *,
    output_dir: str | Path,
    images: str | Path,
    calibration: str | Path | None = None,
    progress: Progress | None = None,
) -> list[TradeoffRow]:
    from ..api import export_checkpoint

    say = progress or (lambda _msg: None)
    out = Path(output_dir)
    rows: list[TradeoffRow] = []
    with tempfile.TemporaryDirectory(prefix="edgerep-bench-") as tmp:
        sources = [model_source(m, Path(tmp)) for m in models]  # bad names fail before any slow work
        for name, ckpt, note in sources:
            exported, info = export_checkpoint(
                name, ckpt, plan=plan, output_dir=out / (name or ckpt.stem), calibration=calibration or images,
                validation=images, progress=say,
            )
            for target, precision, result in exported:
                rows += _rows(info.model, target, precision, result, devices, threads, note, say)
    fill_speedups(rows)
    mark_pareto(rows)
    return rows


def _rows(model, target, precision, result, devices, threads, note, say) -> list[TradeoffRow]:
    if isinstance(result, EdgerepError):
        status = f"export failed: {result}"
        return [_row(model, target, precision, None, None, None, None, d, n, status) for d in devices for n in threads]
    photos = next((s for s in result.validation.sets if s.kind == "images"), None)
    top1 = photos.accuracy_artifact if photos else None
    agreement = photos.top1_agreement if photos else None
    if note == "random weights":
        top1 = None  # a random model's accuracy says nothing; its agreement with fp32 still does
    size = result.size_bytes / 1e6
    rows = []
    for device in devices:
        for n in threads:
            say(f"timing {result.artifact.name} on {device} with {n} thread{'s' * (n > 1)}")
            try:
                with captured(f"timing {result.artifact.name}"):  # runtime logs only with --verbose or on failure
                    lat = latency(result.artifact, device, n, precision)
                status = note or "ok"
            except BadInputError as exc:  # unreachable device, runtime refusing the file: keep the row, marked
                lat, status = None, f"latency failed: {exc}"
            rows.append(_row(model, target, precision, size, top1, agreement, lat, device, n, status))
    return rows


def _row(model, target, precision, size, top1, agreement, lat: Latency | None, device, threads, status) -> TradeoffRow:
    return TradeoffRow(
        model=model, target=target, precision=precision, size_mb=size, top1=top1, agreement=agreement,
        latency_ms=lat.median_ms if lat else None, latency_p90_ms=lat.p90_ms if lat else None,
        latency_kind=lat.kind if lat else "failed", device=device, runtime=lat.runtime if lat else "",
        threads=threads, status=status,
    )
