"""Export a deploy model to a target, run the artifact, compare it with PyTorch, and only then keep it.

    result = export(deployed, name="repvgg_a0", target="onnx", precision="int8", input_size=(3, 224, 224),
                    calibration="calib/", validation="val/", output_dir="out", preprocess=pre, labels=classes)

The artifact is built in a hidden temporary folder inside ``output_dir``; it is run on the validation
images and on random inputs, compared with the PyTorch deploy model, and moved into place (artifact
first, then its manifest, each with an atomic ``os.replace``) only if it passes. A failed check,
an error or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..backends import ExportRequest, backend_for
from ..checkpoints import LoadInfo
from ..console import captured, progress_bar
from ..errors import BadInputError, VerificationError
from ..fileio import STAGING_PREFIX, remove_stale_staging, replace_path, sha256_path, writable_dir, write_json
from ..images import (
    Batch, ImageList, ImageSource, Preprocess, evenly_spaced, list_images, load_images, match_classes,
    typical_short_side,
)
from ..proof.numerics import closeness, output_error, top1_accuracy
from ..reparam import count_blocks
from .manifest import MANIFEST_VERSION, manifest_path, size_bytes, tool_versions
from .targets import AGREEMENT_FLOORS, ERROR_BOUNDS, get_target

__all__ = ["ExportResult", "ExportWarning", "InputSetResult", "Validation", "export"]

RANDOM_INPUTS = 8
Images = ImageSource | Tensor | Batch  # a folder / file list, preprocessed NCHW inputs, or decoded photos
ModelLabels = tuple[list[str] | None, str]  # the model's labels (None: unrecorded) and its name, for messages


class ExportWarning(UserWarning):
    """Something the user should know about an export that still succeeded (e.g. few calibration images)."""


@dataclass
class InputSetResult:
    """Artifact vs PyTorch on one set of inputs. ``cosine`` is the mean per-input cosine similarity."""

    label: str
    kind: str  # "images" (real photos: agreement floors apply) or "random"
    n: int
    max_abs: float
    rel: float
    cosine: float
    cosine_min: float
    top1_agreement: float
    accuracy_reference: float | None = None  # top-1 vs the folder's class labels, when it has them
    accuracy_artifact: float | None = None


@dataclass
class Validation:
    passed: bool
    tolerance: dict[str, float]
    sets: list[InputSetResult]
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExportResult:
    target: str
    precision: str
    artifact: Path
    manifest_path: Path
    manifest: dict
    validation: Validation
    size_bytes: int
    sha256: str
    seconds: float
    warnings: list[str] = field(default_factory=list)


def export(
    model: nn.Module,
    *,
    name: str,
    target: str,
    precision: str | None = None,
    input_size: tuple[int, int, int],
    output_dir: str | Path,
    preprocess: Preprocess,
    calibration: Images | None = None,
    validation: Images | None = None,
    labels: list[str] | None = None,
    source: LoadInfo | str | Path | None = None,
    options: dict | None = None,
    input_layout: str | None = None,
    scheme: str | None = None,
    tolerance: dict | None = None,
    batch: int = 1,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the deploy model ``model`` to ``target`` at ``precision``, validated; see the module docstring.

    ``calibration`` / ``validation`` are image folders (or lists of files, or preprocessed NCHW tensors).
    int8 validates on ``validation``, else on the calibration images. ``tolerance`` overrides the target's
    tolerance for this precision (e.g. ``{"top1_agreement": 0.9}``). Raises ``BadInputError`` for anything
    the target does not allow (before any slow work) and ``VerificationError`` (with ``.report``, the
    ``Validation``) when the artifact fails its check; nothing is written then.
    """
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    bars = progress is not None  # a progress bar per image set, when the caller shows progress at all
    tgt = get_target(target)
    prec = tgt.precision(precision)
    opts = tgt.resolve_options(options)
    layout = tgt.resolve_layout(input_layout)
    scheme = tgt.resolve_scheme(prec, scheme)
    tol = tgt.tolerance(prec, tolerance)
    if count_blocks(model):
        raise BadInputError(
            f"{name} still has {count_blocks(model)} re-param blocks in the train form; deploy it first"
            " (edgerep deploy, or edgerep.deploy()) so the artifact holds the fused graph"
        )
    with captured(f"loading the {tgt.name} converter"):  # their import logs (absl, torchao .so loads) stay hidden
        backend = backend_for(tgt)  # a missing optional dependency fails here, before any work
    out_dir, _ = writable_dir(output_dir)
    remove_stale_staging(out_dir)
    notes: list[str] = []

    calib, calib_labels = None, None
    if prec.calibration:
        calib, calib_labels = _calibration(calibration, prec, preprocess, tgt.name, notes, (labels, name), bars)
    images = _images(validation, preprocess, "validation images", (labels, name), notes, bars)
    if images is None and calib is not None:
        images = (calib, f"{len(calib)} calibration images (no separate validation set given)", calib_labels)

    shape = (batch, *input_size)
    artifact = out_dir / f"{name}-{prec.name}{tgt.suffix}"
    _refuse_foreign(artifact)
    request = ExportRequest(shape, prec.name, calib, layout, opts)
    model = model.eval()
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}export-", dir=out_dir))
    try:
        staged = tmp / artifact.name
        say(f"exporting {name} to {tgt.name} {prec.name}")
        with captured(f"the {tgt.name} converter"):
            info = backend.export(model, request, staged)
        say(f"validating {staged.name}")
        with captured(f"the {tgt.name} runtime"):
            check = _validate(backend, staged, model, images, shape, tol)
        if not check.passed:
            raise VerificationError(
                f"{name} {tgt.name} {prec.name}: the artifact does not match the PyTorch model: "
                + "; ".join(check.failures) + " (nothing was written)",
                check,
            )
        digest = sha256_path(staged)
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": name,
            "source": _source(source),
            "target": tgt.name,
            "precision": prec.name,
            "scheme": scheme,
            "artifact": {"file": artifact.name, "sha256": digest, "size_bytes": size_bytes(staged)},
            "input": {
                "name": info.input_name,
                "shape": list(shape if layout == "nchw" else (shape[0], *shape[2:], shape[1])),
                "layout": layout,
                "dtype": info.input_dtype,
            },
            "output": {"name": info.output_name},
            "options": opts,
            "quantization": info.quantization,
            "preprocess": preprocess.to_dict(),
            "labels": list(labels) if labels is not None else None,
            "validation": check.to_dict(),
            "notes": info.notes + notes,
            "tools": tool_versions(tgt.packages),
        }
        manifest_path(artifact).unlink(missing_ok=True)  # an old manifest must never describe the new file
        replace_path(staged, artifact)
        written = write_json(manifest_path(artifact), manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        tgt.name, prec.name, artifact, written, manifest, check, manifest["artifact"]["size_bytes"], digest,
        time.perf_counter() - started, notes,
    )


@torch.no_grad()
def _validate(backend, path: Path, model: nn.Module, images, shape: tuple[int, ...], tol: dict) -> Validation:
    """Run the artifact on real images (if any) and random inputs; judge against ``tol`` (see targets.py)."""
    gen = torch.Generator().manual_seed(0)
    sets = []
    if images is not None:
        sets.append((images[1], "images", images[0], images[2]))
    noise = torch.randn(RANDOM_INPUTS, *shape[1:], generator=gen)
    sets.append((f"{RANDOM_INPUTS} random inputs (standard normal)", "random", noise, None))
    results, failures = [], []
    for label, kind, x, truth in sets:
        ref = model(x.float()).reshape(len(x), -1)
        out = torch.from_numpy(np.asarray(backend.run(path, x.float().numpy()))).reshape(len(x), -1).float()
        r = _compare(label, kind, ref, out)
        if truth is not None and len(truth) == len(x):
            r.accuracy_reference = top1_accuracy(ref, truth)
            r.accuracy_artifact = top1_accuracy(out, truth)
        results.append(r)
        if not torch.isfinite(out).all():
            failures.append(
                f"artifact output is not finite on {label} while PyTorch's reaches max |ref| = "
                f"{ref.abs().max().item():.3g}" + (" (fp16 overflows past 65504: use fp32, or a model whose "
                                                   "activations stay in range)" if ref.abs().max() > 6e4 else "")
            )
        for key in ERROR_BOUNDS:
            if key in tol and not getattr(r, key) <= tol[key]:
                failures.append(f"{key} {getattr(r, key):.3g} > {tol[key]:g} on {label}")
        if kind == "images":
            for key in AGREEMENT_FLOORS:
                if key in tol and not getattr(r, key) >= tol[key]:
                    failures.append(f"{key} {getattr(r, key):.6g} < {tol[key]:g} on {label}")
    return Validation(not failures, tol, results, failures)


def _compare(label: str, kind: str, ref: Tensor, out: Tensor) -> InputSetResult:
    err, near = output_error(ref, out), closeness(ref, out)
    return InputSetResult(label, kind, len(ref), err.max_abs, err.rel, near.cosine, near.cosine_min, near.top1)


UPSCALE_LIMIT = 2
"""Calibration photos smaller than 1/UPSCALE_LIMIT of the input's short side are warned about (blurry, off-domain)."""


def _calibration(
    calibration: Images | None, prec, pre: Preprocess, target: str, notes: list[str], model: ModelLabels, bars: bool
) -> tuple[Tensor, Tensor | None]:
    """Calibration images as a preprocessed tensor: required, at least the minimum, subsampled past the maximum."""
    if calibration is None:
        raise BadInputError(
            f"{target} {prec.name} is static quantization and needs calibration images: pass --calib DIR, a folder"
            f" of at least {prec.min_calibration_images} (better {prec.warn_calibration_images}+) real images"
        )
    labels = None
    if isinstance(calibration, Tensor):
        n = len(calibration)
    else:
        items = calibration if isinstance(calibration, Batch) else list_images(calibration)
        keep = evenly_spaced(len(items.files), prec.max_calibration_images)
        files = [items.files[i] for i in keep]
        labels = _truth(items, list(keep), _named(calibration, items), model, notes)
        n = len(files)
    if n < prec.min_calibration_images:
        raise BadInputError(
            f"calibration set {_where(calibration)} has {n} images;"
            f" {target} {prec.name} needs at least {prec.min_calibration_images}"
            f" (better {prec.warn_calibration_images}+)"
        )
    if n < prec.warn_calibration_images:
        _warn(notes, f"only {n} calibration images (fewer than {prec.warn_calibration_images}): activation ranges"
                     " may be poorly estimated; use a few hundred images from the deployment domain")
    side = None if isinstance(calibration, Tensor) else typical_short_side(files)
    if side is not None and side * UPSCALE_LIMIT < min(pre.size):
        _warn(notes, f"calibration photos in {_where(calibration)} are about {side} px, the model takes"
                     f" {pre.size[0]}x{pre.size[1]}: upscaled {min(pre.size) / side:.0f}x, they give activation ranges"
                     " unlike real inputs; calibrate with photos at least as large as the input")
    if isinstance(calibration, Tensor):
        x = calibration
    elif isinstance(calibration, Batch):
        x = calibration.images[list(keep)]
    else:
        x = load_images(files, pre, progress=progress_bar("calibration images") if bars else None).images
    return x.float(), labels


def _warn(notes: list[str], note: str) -> None:
    """A problem the export survives: recorded in the manifest and shown as an ExportWarning."""
    notes.append(note)
    warnings.warn(note, ExportWarning, stacklevel=4)


def _images(
    source: Images | None, pre: Preprocess, what: str, model: ModelLabels, notes: list[str], bars: bool = False
) -> tuple[Tensor, str, Tensor | None] | None:
    """Validation images, their description, and their classes as model outputs when the folder has class subfolders."""
    if source is None:
        return None
    if isinstance(source, Tensor):
        return source.float(), f"{len(source)} {what}", None
    bar = progress_bar(what) if bars else None
    batch = source if isinstance(source, Batch) else load_images(source, pre, progress=bar)
    truth = _truth(batch, list(range(len(batch.files))), _named(source, batch), model, notes)
    return batch.images, f"{len(batch.images)} {what} from {_where(source, batch)}", truth


def _named(source: Images, batch: Batch | ImageList) -> str:
    """The image source as a user named it (a folder path), else the folder its files share."""
    return str(source) if isinstance(source, (str, os.PathLike)) else str(Path(os.path.commonpath(batch.files)))


def _where(source: Images, batch: Batch | None = None) -> str:
    """A short name for an image source in messages: its folder, else the folder its files share."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    if isinstance(source, Tensor):
        return "(tensor)"
    files = (batch or source).files if isinstance(batch or source, Batch) else list(source)
    return Path(os.path.commonpath(files)).name if files else "files"


def _truth(
    items: ImageList | Batch, keep: list[int], source: object, model: ModelLabels, notes: list[str]
) -> Tensor | None:
    """The class of each kept image as the model's output index: folder names matched to the model's labels by
    name (as ``edgerep eval`` does), never by sorted position, unless the model records no labels.

    Folders that all differ from the labels (e.g. ImageNet's n01440764/...) still calibrate and validate
    agreement, without accuracy; some matching and some not is a mistake worth an error naming them.
    """
    labels, name = model
    if items.labels is None:
        return None
    if items.classes is None:  # an .npz: its labels are output indices already
        return torch.as_tensor(items.labels)[keep]
    if not labels:
        order = list(range(len(items.classes)))
    elif not set(items.classes) & set(labels):
        notes.append(f"class folders of {source} are not labels of {name}: top-1 accuracy not measured")
        return None
    else:
        order = match_classes(items.classes, labels, source, name)
    return torch.tensor([order[items.labels[i]] for i in keep])


def _refuse_foreign(artifact: Path) -> None:
    """Replacing an earlier artifact is fine; a folder of the user's that happens to bear its name is not."""
    if not artifact.exists() and not artifact.is_symlink():
        return
    ours = manifest_path(artifact).is_file() and (artifact.is_file() or (artifact / "Manifest.json").is_file())
    if artifact.is_symlink() or not ours:
        raise BadInputError(
            f"{artifact} exists and is not an edgerep artifact (no manifest beside it); move it away or choose"
            " another -o folder — edgerep replaces only its own earlier artifacts"
        )


def _source(source: LoadInfo | str | Path | None) -> dict | None:
    if source is None:
        return None
    if isinstance(source, LoadInfo):
        return {
            "path": str(source.path) if source.path else None,
            "sha256": source.sha256,
            "layout": source.layout,
            "form": source.form,
        }
    return {"path": str(source), "sha256": sha256_path(Path(source))}
