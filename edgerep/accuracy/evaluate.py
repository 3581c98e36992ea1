"""Accuracy on real images of a PyTorch checkpoint or of an exported artifact, run through its own runtime.

    subject = open_subject("edgerep-out/repghostnet_050-int8.tflite")    # manifest beside it: preprocessing, labels
    result = evaluate(subject, open_data("photos/"), reference=open_reference("ck.pt"))
    print(result.top1, result.agreement.top1)

What is measured is what ships: an artifact is run by its backend's ``run()`` (onnxruntime, LiteRT, the MIL
evaluator on Linux / ``MLModel.predict`` on macOS), on images preprocessed exactly as its manifest says.
A checkpoint is evaluated in the form it was saved in (a train-form one is not fused first: fusion is
verified elsewhere, and what the user trained is what they asked about).

Labels: an image folder's class names are matched *by name* to the model's labels (manifest or checkpoint
meta), so a folder holding only some of the classes still scores right; a model without recorded labels
takes the folders in sorted order (the ImageFolder convention). An ``.npz`` holds label indices.
Agreement with a reference fp32 PyTorch model (top-1 match, mean KL divergence, mean cosine of the logits)
needs no labels at all.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..backends import get_backend, read_input_spec
from ..checkpoints import Checkpoint, check_geometry, preprocess_of
from ..errors import BadInputError
from ..export.manifest import manifest_path, manifest_preprocess, read_manifest, size_bytes
from ..export.targets import artifact_suffixes, get_target
from ..fileio import sha256_path
from ..images import ImageList, Preprocess, iter_batches, list_images, load_npz, match_classes
from ..proof.numerics import closeness
from .gate import RESULTS_KIND

__all__ = [
    "Agreement", "Data", "EvalResult", "Reference", "Subject", "evaluate", "open_data",
    "open_reference", "open_subject", "results_document",
]

TORCH = "torch"  # the ``target`` of a PyTorch checkpoint's row
Progress = Callable[[int, int], None]


@dataclass
class Subject:
    """Something to evaluate: how to feed it (preprocessing, input shape) and how to run it on a batch."""

    model: str
    target: str
    precision: str
    path: Path
    preprocess: Preprocess
    input_shape: tuple[int, int, int]  # (C, H, W) of the NCHW tensor it is fed (backends transpose NHWC inside)
    predict: Callable[[np.ndarray], np.ndarray]
    labels: list[str] | None = None
    batch: int | None = None  # a fixed batch the runtime needs, or None (any)
    form: str | None = None  # train / deploy, for checkpoints
    size_bytes: int = 0
    source: Path | None = None  # the checkpoint an artifact was exported from, when its manifest names one
    notes: list[str] = field(default_factory=list)
    module: torch.nn.Module | None = None  # the PyTorch model itself, for checkpoints


@dataclass
class Agreement:
    """Subject vs the reference model on the same images: ``top1`` = share of equal argmax, ``kl`` = mean
    KL(reference || subject) of the softmax (nats), ``cosine`` = mean per-image cosine of the logits."""

    reference: str
    top1: float
    kl: float
    cosine: float
    reference_top1: float | None = None  # the reference's own accuracy on the labelled images


@dataclass
class EvalResult:
    model: str
    target: str
    precision: str
    path: str
    form: str | None
    data: str
    count: int
    top1: float | None  # fractions (0..1); None when the data has no labels
    top5: float | None
    agreement: Agreement | None
    size_bytes: int
    seconds: float
    labels: str  # how image labels were matched to the model's outputs
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def results_document(results: list[EvalResult], data: Data) -> dict:
    """What ``edgerep eval --json`` prints and ``-o`` writes; ``edgerep check`` reads it."""
    return {"kind": RESULTS_KIND, "version": 1, "data": data.describe(), "results": [r.to_dict() for r in results]}


def open_subject(path: str | Path, model: str | None = None, overrides: dict | None = None) -> Subject:
    """An exported artifact (by suffix, its manifest beside it) or else a PyTorch checkpoint."""
    p = Path(path)
    if p.suffix in artifact_suffixes():
        return open_artifact(p, model)
    return open_checkpoint(p, model, overrides)


def open_checkpoint(path: str | Path, model: str | None = None, overrides: dict | None = None) -> Subject:
    """A train- or deploy-form checkpoint, evaluated as saved, in float32 (at ``overrides``' geometry if given)."""
    ck = Checkpoint.open(path, overrides)
    name = ck.model_name(model)
    net, info = ck.load(name)
    check_geometry(net, ck, name, info.num_classes)
    net = net.float().eval()
    pre = ck.preprocess(name)

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(x)).reshape(len(x), -1).numpy()

    return Subject(
        name, TORCH, "fp32", ck.path, pre, (3, *pre.size), predict, labels=ck.labels, form=info.form,
        size_bytes=ck.path.stat().st_size, module=net,
    )


def open_artifact(path: str | Path, model: str | None = None) -> Subject:
    """An artifact run by its backend; preprocessing and labels from its manifest, or from ``model``'s zoo spec."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"artifact {p} does not exist; check the path (edgerep export writes to edgerep-out/)")
    target = get_target(artifact_suffixes()[p.suffix])
    mpath = manifest_path(p)
    notes: list[str] = []
    man: dict = {}
    if mpath.is_file():
        man = _manifest(mpath)
        if model is not None and model != man["model"]:
            raise BadInputError(f"{p} is a {man['model']} artifact (its manifest says so), not {model}; drop --model")
        digest = (man.get("artifact") or {}).get("sha256")
        if digest and digest != sha256_path(p):
            raise BadInputError(
                f"manifest {mpath} describes another file (sha256 differs from {p.name}); re-export the artifact,"
                " or delete the stale manifest and pass --model NAME"
            )
        name, precision, labels = man["model"], man["precision"], man.get("labels")
        pre = manifest_preprocess(man, mpath)
        source = _source_checkpoint(man.get("source"))
    elif model is not None:
        name, pre, labels, source = model, preprocess_of(model), None, None
        precision = _precision_from_name(p, model, target)
        notes.append(f"no manifest beside {p.name}: preprocessing from the zoo spec of {model}")
    else:
        raise BadInputError(
            f"artifact {p} has no manifest ({mpath.name}) to say how to feed it; pass --model NAME to use the zoo"
            " model's preprocessing, or re-export it with edgerep export"
        )
    spec = read_input_spec(target, p)
    backend = get_backend(target.backend, target.extra)
    return Subject(
        name, target.name, precision, p, pre, spec.chw, lambda x: backend.run(p, x), labels=labels, batch=spec.batch,
        size_bytes=size_bytes(p), source=source, notes=notes,
    )


def open_reference(path: str | Path, model: str | None = None, overrides: dict | None = None) -> Reference:
    """The fp32 PyTorch model that artifacts are compared with (a checkpoint, never an artifact)."""
    p = Path(path)
    if p.suffix in artifact_suffixes() or manifest_path(p).exists():
        raise BadInputError(f"--reference {p} is an exported artifact; give the PyTorch checkpoint it came from")
    return Reference(open_checkpoint(p, model, overrides))


def _manifest(path: Path) -> dict:
    try:
        man = read_manifest(path)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read manifest {path} ({exc}); re-export the artifact") from None
    missing = [k for k in ("model", "precision", "preprocess") if not isinstance(man, dict) or k not in man]
    if missing:
        raise BadInputError(f"manifest {path} lacks {', '.join(missing)}; re-export the artifact with edgerep export")
    return man


def _source_checkpoint(source: dict | None) -> Path | None:
    """The checkpoint the manifest names, if it is still there unchanged (then it is the natural reference)."""
    if not isinstance(source, dict) or not source.get("path"):
        return None
    p = Path(source["path"])
    if not p.is_file() or (source.get("sha256") and sha256_path(p) != source["sha256"]):
        return None
    return p


def _precision_from_name(path: Path, model: str, target) -> str:
    """``model-int8.onnx`` -> ``int8`` (edgerep export's naming); ``unknown`` for other names."""
    tail = path.name[: -len(path.suffix)].removeprefix(f"{model}-")
    return tail if tail in target.precisions else "unknown"


# --- the images -------------------------------------------------------------------------------------


@dataclass
class Data:
    """An image folder (class subfolders, or flat: unlabelled) or an .npz of images and optional label indices."""

    source: Path
    items: ImageList | None  # None for an .npz
    count: int

    @property
    def classes(self) -> list[str] | None:
        return self.items.classes if self.items is not None else None

    def describe(self) -> str:
        kind = "npz" if self.items is None else ("class folders" if self.classes else "unlabelled folder")
        where = self.source.resolve()
        if where.is_relative_to(Path.cwd()):  # a baseline committed from the repository root stays portable
            where = where.relative_to(Path.cwd())
        return f"{where} ({self.count} images, {kind})"

    def batches(self, pre: Preprocess, size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        if self.items is not None:
            for b in iter_batches(self.items, pre, size):
                yield b.images, b.labels
            return
        batch = load_npz(self.source, pre)
        for start in range(0, len(batch.images), size):
            labels = None if batch.labels is None else batch.labels[start : start + size]
            yield batch.images[start : start + size], labels


def open_data(source: str | Path) -> Data:
    """Check the data once, up front: it exists, holds images, and can be read."""
    p = Path(source)
    if p.suffix.lower() == ".npz":
        return Data(p, None, _npz_count(p))
    try:
        items = list_images(p)
    except PermissionError as exc:
        raise BadInputError(f"cannot read image folder {p} ({exc.strerror}); fix its permissions") from None
    return Data(p, items, len(items.files))


def _npz_count(p: Path) -> int:
    """How many images an .npz holds (its contents are checked against the model's input when loaded)."""
    if not p.is_file():
        raise BadInputError(f"npz file {p} does not exist; check the path")
    try:
        with np.load(p, allow_pickle=False) as data:
            if "images" not in data.files:
                have = ", ".join(data.files) or "nothing"
                raise BadInputError(f"npz file {p} has no 'images' array (it has: {have})")
            n = int(data["images"].shape[0]) if data["images"].ndim else 0
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"cannot read npz file {p} ({exc}); re-create it with numpy.savez") from None
    if n == 0:
        raise BadInputError(f"npz file {p} holds no images")
    return n


def label_map(data: Data, labels: list[str] | None, model: str) -> tuple[np.ndarray | None, str]:
    """Folder label index -> model output index, and how it was matched. Folders not among the labels: error."""
    if data.classes is None:
        return None, "npz label indices" if data.items is None else "none (no class folders)"
    if not labels:
        return None, "class folders in sorted order (the model records no labels)"
    return np.array(match_classes(data.classes, labels, data.source, model)), "class folders matched to labels by name"


# --- the measurement --------------------------------------------------------------------------------


class Reference:
    """The reference model, with its logits kept per (preprocessing, batch): several subjects run it once."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self._out: dict[tuple, np.ndarray] = {}

    def __call__(self, pre: Preprocess, start: int, x: np.ndarray) -> np.ndarray:
        key = (pre, start, len(x))
        if key not in self._out:
            self._out[key] = self.subject.predict(x)
        return self._out[key]


def evaluate(
    subject: Subject,
    data: Data,
    *,
    reference: Reference | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> EvalResult:
    """Top-1/top-5 of ``subject`` on ``data`` (when labelled) and its agreement with ``reference`` (when given)."""
    if batch_size < 1:
        raise BadInputError(f"batch size must be >= 1, got {batch_size}")
    ref = reference
    pre = subject.preprocess
    if ref is not None and ref.subject.input_shape != subject.input_shape:
        raise BadInputError(
            f"reference {ref.subject.path} takes input {_shape(ref.subject.input_shape)}, {subject.path.name} takes"
            f" {_shape(subject.input_shape)}; compare models with the same input size"
        )
    mapping, how = label_map(data, subject.labels, subject.model)  # before the slow part
    fixed = subject.batch or 1
    chunk = max(fixed, batch_size // fixed * fixed)
    started = time.perf_counter()
    outs, refs, truth = [], [], []
    done = 0
    for images, labels in data.batches(pre, chunk):
        x = images.float().numpy()
        if tuple(x.shape[1:]) != subject.input_shape:
            raise BadInputError(
                f"{subject.path.name} takes input {_shape(subject.input_shape)} (NCHW), but the images from"
                f" {data.source} are {_shape(x.shape[1:])}; use images preprocessed for this model"
            )
        outs.append(_run(subject, x, fixed))
        if ref is not None:
            refs.append(ref(pre, done, x).reshape(len(x), -1))
        if labels is not None:
            truth.append(labels.numpy())
        done += len(x)
        if progress is not None:
            progress(done, data.count)
    logits = np.concatenate(outs).astype(np.float64)
    top1 = top5 = None
    if truth:
        y = np.concatenate(truth)
        if mapping is not None:
            y = mapping[y]
        if y.min() < 0 or y.max() >= logits.shape[1]:
            raise BadInputError(
                f"labels in {data.source} run from {y.min()} to {y.max()}, but {subject.model} has"
                f" {logits.shape[1]} outputs; use labels 0..{logits.shape[1] - 1}"
            )
        top1, top5 = _topk(logits, y, 1), _topk(logits, y, min(5, logits.shape[1]))
    agreement = None
    if ref is not None:
        r = np.concatenate(refs).astype(np.float64)
        if r.shape != logits.shape:
            raise BadInputError(
                f"reference {ref.subject.path} has {r.shape[1]} outputs, {subject.path.name} has {logits.shape[1]};"
                " compare models with the same classes"
            )
        agreement = _agreement(r, logits, str(ref.subject.path))
        if truth:
            agreement.reference_top1 = _topk(r, y, 1)
    return EvalResult(
        subject.model, subject.target, subject.precision, str(subject.path), subject.form, data.describe(),
        len(logits), top1, top5, agreement, subject.size_bytes, time.perf_counter() - started, how,
        list(subject.notes),
    )


def _run(subject: Subject, x: np.ndarray, fixed: int) -> np.ndarray:
    """Pad the last chunk to the runtime's fixed batch, run, drop the padding's outputs."""
    n = len(x)
    pad = -n % fixed
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
    return np.asarray(subject.predict(x), dtype=np.float32).reshape(len(x), -1)[:n]


def _topk(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def _agreement(ref: np.ndarray, out: np.ndarray, where: str) -> Agreement:
    near = closeness(ref, out)
    return Agreement(where, near.top1, near.kl, near.cosine)


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape)
