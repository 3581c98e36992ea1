"""Real images in: folders, file lists and .npz files turned into model-ready tensor batches.

Preprocessing is the torchvision/timm eval recipe done with Pillow alone (torchvision is not a
dependency): resize the shorter side, center-crop to the model's input size, RGB, /255, normalize.
The recipe is a small JSON-serialisable ``Preprocess`` so that an exported artifact can carry the exact
preprocessing its accuracy was measured with.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import BadInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

ImageSource = str | os.PathLike | Sequence[str | os.PathLike]
Progress = Callable[[int, int], None]
"""Called as ``progress(decoded, total)`` as each batch is ready; wrap tqdm or a print in it."""


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: shorter side to ``resize``, center crop to ``size`` (H, W), then normalize.

    ``resize=None`` means "scale just enough to cover the crop" (for a square crop: shorter side to the
    crop size, crop fraction 1), which is what small-input models like CIFAR ones want; ImageNet models
    use e.g. ``resize=256, size=224`` (see ``for_input``).
    """

    size: tuple[int, int]
    resize: int | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(int(s) for s in self.size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(size) != 2 or min(size) < 1:
            raise BadInputError(f"preprocess size must be one or two positive ints, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise BadInputError(f"preprocess mean/std need 3 values (RGB), got {self.mean!r} / {self.std!r}")
        if min(self.std) <= 0:
            raise BadInputError(f"preprocess std must be positive, got {self.std!r}")
        if self.interpolation not in _RESAMPLING:
            raise BadInputError(
                f"unknown interpolation {self.interpolation!r}; use one of {', '.join(sorted(_RESAMPLING))}"
            )
        if self.resize is not None and self.resize < max(size):
            raise BadInputError(
                f"preprocess resize {self.resize} is smaller than the crop {size}; use resize >= {max(size)}"
            )

    @classmethod
    def for_input(
        cls,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        crop_pct: float = 1.0,
        interpolation: str = "bilinear",
    ) -> "Preprocess":
        """From a model's ``(C, H, W)`` input size; ``crop_pct=0.875`` gives the usual 256 -> 224 recipe."""
        h, w = (int(s) for s in input_size[-2:])
        resize = int(math.floor(min(h, w) / crop_pct))
        return cls((h, w), None if resize == min(h, w) else resize, tuple(mean), tuple(std), interpolation)

    def to_dict(self) -> dict:
        """Plain JSON types (lists, not tuples), e.g. for an export manifest."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class ImageList:
    """Files to load, their labels (None for an unlabelled folder/list) and the class names."""

    files: list[Path]
    labels: list[int] | None = None
    classes: list[str] | None = None


@dataclass
class Batch:
    """Images as a (N, 3, H, W) tensor (float normalized, or uint8 raw), with labels and source files."""

    images: Tensor
    labels: Tensor | None
    files: list[Path]
    classes: list[str] | None = None  # class folder names, indexed by ``labels``


def evenly_spaced(n: int, limit: int) -> list[int]:
    """Indices of at most ``limit`` items spread evenly over ``n`` (all of them when ``limit`` is 0)."""
    if not limit or n <= limit:
        return list(range(n))
    step = n / limit
    return [int(i * step) for i in range(limit)]


def list_images(source: ImageSource) -> ImageList:
    """Resolve a class-per-subfolder folder, a flat folder of images, or a list of image files.

    Class folders give labels in sorted folder-name order (the torchvision ImageFolder convention),
    so a label index means the same thing on every machine.
    """
    if isinstance(source, (str, os.PathLike)):
        return _list_folder(Path(source))
    files = [Path(f) for f in source]
    if not files:
        raise BadInputError("the list of image files is empty; pass at least one image")
    for f in files:
        if not f.is_file():
            raise BadInputError(f"image {f} does not exist or is not a file; check the path")
    return ImageList(files)


def typical_short_side(files: Sequence[Path], sample: int = 16) -> int | None:
    """Median shorter side (px) of up to ``sample`` photos spread over ``files``, read from their headers only."""
    sides = []
    for i in evenly_spaced(len(files), sample):
        try:
            with Image.open(files[i]) as im:
                sides.append(min(im.size))
        except (OSError, UnidentifiedImageError):
            continue  # decoding reports unreadable files with their names
    return int(np.median(sides)) if sides else None


def read_image(path: str | os.PathLike, pre: Preprocess) -> np.ndarray:
    """Decode one image and resize/crop it: a (H, W, 3) uint8 array. Corrupt files name themselves."""
    try:
        with Image.open(path) as im:
            im.load()
            return _resize_crop(to_rgb8(im), pre)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"cannot read image {path} ({exc}); remove or replace the file") from None


# Pillow's modes for one channel of more than 8 bits: 16-bit PNG / TIFF ("I;16*") and 16-bit PGM ("I").
_WIDE_GREY = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow image as (H, W, 3) uint8 RGB, scaling instead of clipping.

    ``Image.convert("RGB")`` clips 16-bit greys to white (a mid-grey 16-bit PNG would read as 255); here they are
    scaled by 255/65535, as 8-bit = round(16-bit / 257). Float greys ("F") are taken as [0, 1] when every value is
    within it, else as [0, 255]. Palette images with transparency go through RGBA (Pillow warns otherwise); as in
    the usual training loaders, alpha is dropped (the stored colours are kept) and CMYK / YCbCr / LA use Pillow's
    own conversion.
    """
    if im.mode in _WIDE_GREY or im.mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        if im.mode in _WIDE_GREY:
            grey = grey / 257.0
        elif grey.size and np.nanmax(grey) <= 1.0:
            grey = grey * 255.0
        grey = np.clip(np.nan_to_num(np.round(grey)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("P", "PA") and (im.mode == "PA" or "transparency" in im.info):
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def match_classes(classes: Sequence[str], labels: Sequence[str], source: object, model: str) -> list[int]:
    """Class folder index -> the model's output index, matching folder names to the model's labels by name.

    A folder holding some of the classes (``cat/``, ``dog/``) must not be labelled by its sorted position;
    a folder name that is not a label is an error naming it.
    """
    unknown = [c for c in classes if c not in labels]
    if unknown:
        shown = ", ".join(unknown[:4]) + (f" (+{len(unknown) - 4} more)" if len(unknown) > 4 else "")
        some = ", ".join(labels[:6]) + (", ..." if len(labels) > 6 else "")
        raise BadInputError(
            f"class folders {shown} in {source} are not labels of {model} ({some}); name the folders"
            " after the model's labels"
        )
    return [list(labels).index(c) for c in classes]


def normalize(images: Tensor, pre: Preprocess) -> Tensor:
    """uint8 (N, 3, H, W) -> float32 ``(x / 255 - mean) / std``; the last step of every load path."""
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def iter_batches(
    source: ImageSource | ImageList,
    pre: Preprocess,
    batch_size: int = 64,
    *,
    raw: bool = False,
    progress: Progress | None = None,
) -> Iterator[Batch]:
    """Decode lazily, one batch at a time, so a large folder never has to fit in memory.

    ``raw=True`` yields uint8 (N, 3, H, W) before normalization (for training-time augmentation).
    """
    if batch_size < 1:
        raise BadInputError(f"batch size must be >= 1, got {batch_size}")
    items = source if isinstance(source, ImageList) else list_images(source)
    total = len(items.files)
    for start in range(0, total, batch_size):
        files = items.files[start : start + batch_size]
        arr = np.stack([read_image(f, pre) for f in files])
        images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        labels = None if items.labels is None else torch.tensor(items.labels[start : start + batch_size])
        if progress is not None:
            progress(start + len(files), total)
        yield Batch(images if raw else normalize(images, pre), labels, files)


def load_images(
    source: ImageSource | ImageList, pre: Preprocess, *, raw: bool = False, progress: Progress | None = None
) -> Batch:
    """All images of ``source`` in one batch (see ``iter_batches`` for the lazy form); ``.npz`` files too."""
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".npz":
        if raw:
            raise BadInputError(f"{source}: raw=True is for image files; an .npz is loaded normalized")
        return load_npz(source, pre)
    items = source if isinstance(source, ImageList) else list_images(source)
    batches = list(iter_batches(items, pre, 256, raw=raw, progress=progress))
    if not batches:
        raise BadInputError("no images to load (the image list is empty)")
    labels = None if batches[0].labels is None else torch.cat([b.labels for b in batches])
    return Batch(torch.cat([b.images for b in batches]), labels, [f for b in batches for f in b.files], items.classes)


def load_npz(path: str | os.PathLike, pre: Preprocess | None = None) -> Batch:
    """Images from an .npz: ``images`` as (N, H, W, 3) uint8 or (N, 3, H, W) float, optional ``labels``.

    uint8 images are raw pixels and go through ``pre`` (required) like files do; float images are taken
    as already preprocessed model inputs and only their size is checked against ``pre``.
    """
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"npz file {p} does not exist; check the path")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"cannot read npz file {p} ({exc}); re-create it with numpy.savez") from None
    if "images" not in arrays:
        raise BadInputError(f"npz file {p} has no 'images' array (it has: {', '.join(arrays) or 'nothing'})")
    images = arrays["images"]
    n = images.shape[0] if images.ndim else 0
    files = [p] * n
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        if pre is None:
            raise BadInputError(f"npz file {p} holds raw uint8 pixels; pass a Preprocess to normalize them")
        crops = np.stack([_resize_crop(img, pre) for img in images]) if n else images
        x = normalize(torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(), pre)
    elif np.issubdtype(images.dtype, np.floating) and images.ndim == 4 and images.shape[1] == 3:
        if pre is not None and tuple(images.shape[2:]) != pre.size:
            raise BadInputError(
                f"npz file {p} holds preprocessed images of size {tuple(images.shape[2:])}, the model needs {pre.size}"
            )
        x = torch.from_numpy(images.astype(np.float32, copy=False))
    else:
        raise BadInputError(
            f"npz file {p}: 'images' is {images.dtype} of shape {images.shape}; expected (N, H, W, 3) uint8"
            " or (N, 3, H, W) float"
        )
    if n == 0:
        raise BadInputError(f"npz file {p} holds no images")
    labels = arrays.get("labels")
    if labels is None:
        return Batch(x, None, files)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise BadInputError(
            f"npz file {p}: 'labels' is {labels.dtype} of shape {labels.shape}; expected {n} integers"
        )
    return Batch(x, torch.from_numpy(labels.astype(np.int64)), files)


def _list_folder(root: Path) -> ImageList:
    try:
        return _scan_folder(root)
    except OSError as exc:  # e.g. a folder without read permission
        where = exc.filename or root
        raise BadInputError(
            f"cannot read image folder {where} ({exc.strerror or exc}); check its permissions or choose another folder"
        ) from None


def _scan_folder(root: Path) -> ImageList:
    if not root.exists():
        raise BadInputError(f"image folder {root} does not exist; check the path")
    if not root.is_dir():
        if _is_image(root):
            return ImageList([root])
        raise BadInputError(f"{root} is neither an image folder nor an image file")
    loose = sorted(f for f in root.iterdir() if f.is_file() and _is_image(f))
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    per_class = {d.name: sorted(f for f in d.rglob("*") if f.is_file() and _is_image(f)) for d in class_dirs}
    if not any(per_class.values()):
        if not loose:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise BadInputError(f"image folder {root} contains no images ({exts}), neither directly nor in subfolders")
        return ImageList(loose)
    if loose:
        raise BadInputError(
            f"image folder {root} mixes loose images ({loose[0].name}, ...) with class subfolders;"
            " move the loose images into a class folder or into a folder of their own"
        )
    empty = [name for name, fs in per_class.items() if not fs]
    if empty:
        raise BadInputError(
            f"class folder {root / empty[0]} has no images; remove it, or labels would not match the class order"
        )
    classes = list(per_class)
    files = [f for name in classes for f in per_class[name]]
    labels = [i for i, name in enumerate(classes) for _ in per_class[name]]
    return ImageList(files, labels, classes)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _resize_crop(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Shorter side to ``pre.resize`` (or just covering the crop), then center crop, rounded as torchvision does."""
    h, w = img.shape[:2]
    ch, cw = pre.size
    if pre.resize is not None:
        short = pre.resize
    elif h <= w:  # no explicit resize: just enough to cover the crop
        short = max(ch, math.ceil(cw * h / w))
    else:
        short = max(cw, math.ceil(ch * w / h))
    if h <= w:
        nh, nw = short, max(cw, int(short * w / h))
    else:
        nh, nw = max(ch, int(short * h / w)), short
    if (nh, nw) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((nw, nh), _RESAMPLING[pre.interpolation]))
    top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
    return np.ascontiguousarray(img[top : top + ch, left : left + cw])
