"""``edgerep bench``: deploy -> export -> validate -> evaluate -> profile, for several models, targets, devices.

Accuracy comes from the export's own validation pass: each artifact is run through its runtime on the
labelled images and compared with the PyTorch deploy model, so top-1 and agreement are those of the file
that ships. A failure at any stage keeps the row, marked with what failed, and the run goes on.
The steps are plain functions (``export_one``/``summarize``, ``measure``, ``make_row``) so the Ray runner
(``cluster.py``) runs the same code as this single-process loop and produces the same rows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..console import captured
from ..errors import BadInputError, EdgerepError
from .latency import Latency, latency
from .table import TradeoffRow, fill_speedups, mark_pareto

Progress = Callable[[str], None]


@dataclass
class Exported:
    """What the rows need from one export: small and picklable, so it can travel between machines."""

    model: str
    target: str
    precision: str
    size_mb: float | None
    top1: float | None
    agreement: float | None
    artifact: str | None  # file (or .mlpackage folder) name inside the model's output folder; None if it failed
    status: str  # the model's note ("random weights") or "ok", or why the export failed


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


def output_folder(name: str | None, ckpt: Path) -> str:
    """The sub-folder of the output (or artifact store) that holds one model's artifacts."""
    return name or ckpt.stem


def export_one(
    name: str | None, ckpt: Path, note: str, plan: list[tuple[str, str]], *, output_dir: Path,
    images: str | Path, calibration: str | Path | None, say: Progress, overrides: dict | None = None,
) -> list[Exported]:
    """Export ``plan`` for one model and summarize every artifact (failures included) for the rows.

    ``overrides``: geometry flags (input size, mean/std, labels...) over what each checkpoint's meta says.
    """
    from ..api import export_checkpoint

    exported, info = export_checkpoint(
        name, ckpt, plan=plan, output_dir=output_dir, calibration=calibration or images, validation=images,
        progress=say, overrides=overrides,
    )
    return [summarize(info.model, t, p, result, note) for t, p, result in exported]


def summarize(model: str, target: str, precision: str, result, note: str) -> Exported:
    if isinstance(result, EdgerepError):
        return Exported(model, target, precision, None, None, None, None, f"export failed: {result}")
    photos = next((s for s in result.validation.sets if s.kind == "images"), None)
    top1 = photos.accuracy_artifact if photos else None
    agreement = photos.top1_agreement if photos else None
    if note == "random weights":
        top1 = None  # a random model's accuracy says nothing; its agreement with fp32 still does
    return Exported(model, target, precision, result.size_bytes / 1e6, top1, agreement, result.artifact.name,
                    note or "ok")


def measure(artifact: Path, device: str, threads: int, precision: str, ssh=None) -> tuple[Latency | None, str]:
    """(latency, "") or (None, why): an unreachable device or a runtime refusing the file keeps the row."""
    try:
        with captured(f"timing {artifact.name}"):  # runtime logs only with --verbose or on failure
            return latency(artifact, device, threads, precision, ssh=ssh), ""
    except BadInputError as exc:
        return None, f"latency failed: {exc}"


def make_row(e: Exported, device: str, threads: int, lat: Latency | None, failure: str = "",
             node: str = "") -> TradeoffRow:
    status = e.status if e.artifact is None else (failure or e.status)
    return TradeoffRow(
        model=e.model, target=e.target, precision=e.precision, size_mb=e.size_mb, top1=e.top1,
        agreement=e.agreement, latency_ms=lat.median_ms if lat else None,
        latency_p90_ms=lat.p90_ms if lat else None, latency_kind=lat.kind if lat else "failed", device=device,
        runtime=lat.runtime if lat else "", threads=threads, status=status, node=node,
    )


def finish(rows: list[TradeoffRow]) -> list[TradeoffRow]:
    """What every run does last, whatever ran the jobs: speed-ups against fp32 and the Pareto front."""
    fill_speedups(rows)
    mark_pareto(rows)
    return rows


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
    ssh=None,
    overrides: dict | None = None,
) -> list[TradeoffRow]:
    say = progress or (lambda _msg: None)
    out = Path(output_dir)
    rows: list[TradeoffRow] = []
    with tempfile.TemporaryDirectory(prefix="edgerep-bench-") as tmp:
        sources = [model_source(m, Path(tmp)) for m in models]  # bad names fail before any slow work
        for name, ckpt, note in sources:
            folder = out / output_folder(name, ckpt)
            for e in export_one(name, ckpt, note, plan, output_dir=folder, images=images, calibration=calibration,
                                say=say, overrides=overrides):
                for device in devices:
                    for n in threads:
                        if e.artifact is None:
                            rows.append(make_row(e, device, n, None))
                            continue
                        say(f"timing {e.artifact} on {device} with {n} thread{'s' * (n > 1)}")
                        lat, failure = measure(folder / e.artifact, device, n, e.precision, ssh)
                        rows.append(make_row(e, device, n, lat, failure))
    return finish(rows)
