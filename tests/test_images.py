"""Image loading: folder layouts, label order, exact preprocessing numbers, npz, every error path, and
the embedded default (shipped images + trained checkpoint) that lets the CLI run with no arguments."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import locked_folder
from PIL import Image

from edgerep import defaults
from edgerep.checkpoints import Checkpoint, load_state_dict, preprocess_of
from edgerep.checkpoints.load import load_model
from edgerep.errors import BadInputError
from edgerep.fileio import sha256_path
from edgerep.images import (
    ImageList,
    Preprocess,
    iter_batches,
    list_images,
    load_images,
    load_npz,
    normalize,
    read_image,
)

PLAIN = Preprocess(4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # /255 only: pixel values stay readable
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def solid(rgb: tuple[int, int, int], h: int = 4, w: int = 4) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Classes created out of order; each image's red channel encodes its class, green its index."""
    for name, red in (("zebra", 200), ("ant", 10), ("moth", 100)):
        for i in range(3 if name != "moth" else 2):
            save_png(tmp_path / name / f"{i}.png", solid((red, i, 0)))
    return tmp_path


# --- folders, lists, label order ---------------------------------------------------------------


def test_class_folder_labels_follow_sorted_folder_names(class_folder: Path) -> None:
    batch = load_images(class_folder, PLAIN, raw=True)
    items = list_images(class_folder)
    assert items.classes == ["ant", "moth", "zebra"]
    assert batch.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (8, 3, 4, 4)
    red = {0: 10, 1: 100, 2: 200}
    assert batch.images[:, 0, 0, 0].tolist() == [red[y] for y in batch.labels.tolist()]
    assert [f.parent.name for f in batch.files] == ["ant"] * 3 + ["moth"] * 2 + ["zebra"] * 3


def test_flat_folder_and_file_list_have_no_labels(tmp_path: Path) -> None:
    files = [save_png(tmp_path / f"{n}.png", solid((n, 0, 0))) for n in (3, 1, 2)]
    flat = load_images(tmp_path, PLAIN, raw=True)
    assert flat.labels is None and [f.name for f in flat.files] == ["1.png", "2.png", "3.png"]
    listed = load_images(files, PLAIN, raw=True)
    assert listed.labels is None and listed.images[:, 0, 0, 0].tolist() == [3, 1, 2]
    single = load_images(files[0], PLAIN, raw=True)
    assert single.images.shape == (1, 3, 4, 4)


def test_hidden_and_non_image_files_are_ignored(class_folder: Path) -> None:
    (class_folder / "ant" / ".DS_Store").write_bytes(b"\0junk")
    (class_folder / "ant" / "._0.png").write_bytes(b"\0junk")
    (class_folder / "README.txt").write_text("notes")
    (class_folder / ".cache").mkdir()
    assert len(list_images(class_folder).files) == 8


def test_grey_palette_and_alpha_images_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 4)).save(tmp_path / "alpha.png")
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([9, 8, 7] * 256)
    palette.save(tmp_path / "palette.png")
    batch = load_images(tmp_path, PLAIN, raw=True)
    assert batch.images[:, :, 0, 0].tolist() == [[1, 2, 3], [77, 77, 77], [9, 8, 7]]


# --- preprocessing numbers ---------------------------------------------------------------------


def test_normalization_of_known_pixels() -> None:
    pre = Preprocess(4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = normalize(torch.tensor([255, 0, 128], dtype=torch.uint8).view(1, 3, 1, 1), pre)
    expected = [(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (128 / 255 - 0.0) / 2.0]
    assert x.dtype == torch.float32
    assert x.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_folder_to_normalized_values(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", solid((255, 51, 0), 6, 6))
    pre = Preprocess(4, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = load_images(tmp_path, pre).images
    assert x.shape == (1, 3, 4, 4)
    for c, v in enumerate((1.0, 0.2, 0.0)):
        assert torch.allclose(x[0, c], torch.full((4, 4), (v - pre.mean[c]) / pre.std[c]), atol=1e-6)


def test_center_crop_takes_the_middle(tmp_path: Path) -> None:
    # 4x8 image: shorter side already 4, so no resize; the crop keeps columns 2..5.
    cols = np.tile(np.arange(8, dtype=np.uint8)[None, :, None] * 10, (4, 1, 3))
    out = read_image(save_png(tmp_path / "wide.png", cols), PLAIN)
    assert out.shape == (4, 4, 3) and out[0, :, 0].tolist() == [20, 30, 40, 50]
    # 6x6 with resize=6, crop 4: rows/cols 1..4.
    grid = (np.arange(36, dtype=np.uint8).reshape(6, 6)[..., None] * 7).repeat(3, 2)
    out = read_image(save_png(tmp_path / "grid.png", grid), Preprocess(4, resize=6, mean=(0, 0, 0), std=(1, 1, 1)))
    assert np.array_equal(out[..., 0], grid[1:5, 1:5, 0])


def test_resize_shorter_side_then_crop(tmp_path: Path) -> None:
    # 40x60, shorter side -> 20 gives 20x30 (nearest: source column 2j+1), crop 20 keeps columns 5..24.
    cols = np.tile((np.arange(60, dtype=np.uint8) * 4)[None, :, None], (40, 1, 3))
    pre = Preprocess(20, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")
    out = read_image(save_png(tmp_path / "wide.png", cols), pre)
    assert out.shape == (20, 20, 3)
    assert out[0, :, 0].tolist() == [(2 * j + 1) * 4 for j in range(5, 25)]
    tall = read_image(save_png(tmp_path / "tall.png", np.zeros((50, 10, 3))), Preprocess(8, resize=10))
    assert tall.shape == (8, 8, 3)
    nonsquare = read_image(save_png(tmp_path / "sq.png", np.zeros((10, 10, 3))), Preprocess((4, 8)))
    assert nonsquare.shape == (4, 8, 3)


def test_preprocess_is_json_serialisable_and_validated() -> None:
    pre = Preprocess.for_input((3, 224, 224), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_pct=0.875)
    assert pre.size == (224, 224) and pre.resize == 256
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert Preprocess.for_input((3, 32, 32), (0, 0, 0), (1, 1, 1)).resize is None
    with pytest.raises(BadInputError, match="interpolation"):
        Preprocess(4, interpolation="cubic-ish")
    with pytest.raises(BadInputError, match="smaller than the crop"):
        Preprocess(224, resize=200)
    with pytest.raises(BadInputError, match="std must be positive"):
        Preprocess(4, std=(1, 0, 1))
    with pytest.raises(BadInputError, match="3 values"):
        Preprocess(4, mean=(0.5,))
    with pytest.raises(BadInputError, match="positive ints"):
        Preprocess((0, 4))


# --- batches and progress ----------------------------------------------------------------------


def test_iter_batches_is_lazy_and_reports_progress(class_folder: Path) -> None:
    (class_folder / "zebra" / "9.png").write_bytes(b"not a png")  # 9th file: only the 3rd batch fails
    calls: list[tuple[int, int]] = []
    batches = iter_batches(class_folder, PLAIN, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    sizes = [len(next(batches).files) for _ in range(2)]
    assert sizes == [4, 4] and calls == [(4, 9), (8, 9)]
    with pytest.raises(BadInputError, match="9.png"):
        next(batches)
    with pytest.raises(BadInputError, match="batch size"):
        next(iter_batches(class_folder, PLAIN, batch_size=0))


def test_iter_batches_accepts_an_image_list(class_folder: Path) -> None:
    items = list_images(class_folder)
    subset = ImageList(items.files[:2], items.labels[:2], items.classes)
    (batch,) = iter_batches(subset, PLAIN, batch_size=8)
    assert batch.images.dtype == torch.float32 and batch.labels.tolist() == [0, 0]


# --- npz ---------------------------------------------------------------------------------------


def test_npz_uint8_with_labels(tmp_path: Path) -> None:
    imgs = np.stack([solid((255, 0, 0), 6, 6), solid((0, 255, 0), 6, 6)])
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.array([3, 7]))
    batch = load_npz(tmp_path / "d.npz", PLAIN)
    assert batch.images.shape == (2, 3, 4, 4) and batch.labels.tolist() == [3, 7]
    assert torch.equal(load_images(tmp_path / "d.npz", PLAIN).images, batch.images)
    assert batch.images[:, :, 0, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def test_npz_float_is_taken_as_preprocessed(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", images=x)
    batch = load_npz(tmp_path / "f.npz", PLAIN)
    assert batch.labels is None and np.array_equal(batch.images.numpy(), x)
    assert load_npz(tmp_path / "f.npz").images.shape == (3, 3, 4, 4)


@pytest.mark.parametrize(
    ("arrays", "pre", "match"),
    [
        ({"x": np.zeros((1, 4, 4, 3), np.uint8)}, PLAIN, "no 'images' array"),
        ({"images": np.zeros((1, 4, 4), np.uint8)}, PLAIN, "expected \\(N, H, W, 3\\) uint8"),
        ({"images": np.zeros((1, 4, 4, 3), np.uint8)}, None, "pass a Preprocess"),
        ({"images": np.zeros((1, 3, 8, 8), np.float32)}, PLAIN, "size \\(8, 8\\), the model needs \\(4, 4\\)"),
        ({"images": np.zeros((0, 3, 4, 4), np.float32)}, PLAIN, "holds no images"),
        ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array([1])}, PLAIN, "expected 2 integers"),
        ({"images": np.zeros((1, 4, 4, 3), np.uint8), "labels": np.array([0.5])}, PLAIN, "expected 1 integers"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, pre: Preprocess | None, match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BadInputError, match=match):
        load_npz(tmp_path / "bad.npz", pre)


def test_npz_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        load_npz(tmp_path / "nope.npz", PLAIN)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(BadInputError, match="cannot read npz file .*junk.npz"):
        load_npz(tmp_path / "junk.npz", PLAIN)


# --- error paths -------------------------------------------------------------------------------


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(BadInputError, match="contains no images"):
        list_images(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(BadInputError, match="contains no images"):
        list_images(tmp_path)
    with pytest.raises(BadInputError, match="neither an image folder nor an image file"):
        list_images(tmp_path / "notes.txt")


def test_layout_errors(class_folder: Path) -> None:
    (class_folder / "bee").mkdir()
    with pytest.raises(BadInputError, match="class folder .*bee has no images"):
        list_images(class_folder)
    (class_folder / "bee").rmdir()
    save_png(class_folder / "loose.png", solid((0, 0, 0)))
    with pytest.raises(BadInputError, match="mixes loose images"):
        list_images(class_folder)


def test_file_list_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="list of image files is empty"):
        list_images([])
    with pytest.raises(BadInputError, match="gone.png does not exist"):
        list_images([tmp_path / "gone.png"])
    with pytest.raises(BadInputError, match="no images to load"):
        load_images(ImageList([]), PLAIN)


def test_corrupt_and_truncated_images_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(BadInputError, match="cannot read image .*bad.jpg"):
        load_images(tmp_path, PLAIN)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "bad.jpg").unlink()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="cannot read image .*t.jpg"):
        read_image(tmp_path / "t.jpg", PLAIN)


# --- the embedded default ----------------------------------------------------------------------


def test_shipped_images_are_found_as_package_resources() -> None:
    root = resources.files("edgerep").joinpath("data", "cifar10", "test")
    assert root.is_dir()
    assert Path(str(root)).resolve() == defaults.default_images_dir().resolve()
    assert (defaults.default_images_dir().parent / "SOURCE.md").is_file()


def test_shipped_images_load_with_cifar_labels() -> None:
    items = list_images(defaults.default_images_dir())
    assert items.classes == CIFAR_CLASSES
    assert np.bincount(items.labels).tolist() == [20] * 10
    batch = load_images(items, defaults.default_preprocess())
    assert batch.images.shape == (200, 3, 32, 32) and torch.isfinite(batch.images).all()


def test_shipped_checkpoint_loads_and_matches_its_recipe() -> None:
    path = defaults.default_model_path()
    assert path.suffix == ".pt" and path.stat().st_size < 4_000_000
    sd = load_state_dict(path)
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {torch.float16}
    obj = Checkpoint.open(path).obj
    meta, recipe = obj["meta"], defaults.default_recipe()
    assert meta["model"] == recipe["model"] == defaults.default_model_name()
    assert meta["form"] == "train" and meta["num_classes"] == 10 and meta["input_size"] == [3, 32, 32]
    assert meta["labels"] == recipe["data"]["classes"] == CIFAR_CLASSES
    # The CLI derives preprocessing from the checkpoint meta: it must be what the model was trained with.
    assert preprocess_of(meta["model"], meta) == defaults.default_preprocess()
    assert recipe["checkpoint_sha256"] == sha256_path(path)


def test_shipped_model_reproduces_its_recorded_top1() -> None:
    model, info = load_model(defaults.default_model_name(), defaults.default_model_path())
    assert info.form == "train" and info.num_classes == 10
    batch = load_images(defaults.default_images_dir(), defaults.default_preprocess())
    with torch.no_grad():
        acc = (model(batch.images).argmax(1) == batch.labels).sum().item() / len(batch.labels)
    assert acc == pytest.approx(defaults.default_recipe()["top1"]["shipped_fp16"], abs=1e-9)
    assert acc > 0.3  # far above chance (0.1): the weights are trained, not random


# --- every Pillow mode to 8-bit RGB: scaled, never clipped (issue 12, case 2) -------------------------------


def test_16_bit_grey_png_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    grey = np.full((8, 8), 32768, np.uint16)  # mid-grey in 16 bits; Pillow's convert("RGB") reads 255
    grey[:, :4] = 65535
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    x = read_image(tmp_path / "g16.png", Preprocess(8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    assert x.dtype == np.uint8 and x.shape == (8, 8, 3)
    assert x[:, 4:].tolist() == [[[128] * 3] * 4] * 8 and x[:, :4].min() == 255  # round(32768 / 257) = 128
    assert abs(x.mean() - (255 + 128) / 2) < 1e-9


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), (128, 128, 128)),  # F in [0, 1]
        (lambda: Image.fromarray(np.full((4, 4), 200.0, np.float32)), (200, 200, 200)),  # F in [0, 255]
        (lambda: Image.fromarray(np.full((4, 4), 1028, np.int32), "I"), (4, 4, 4)),  # 16-bit PGM data
        (lambda: Image.new("LA", (4, 4), (90, 0)), (90, 90, 90)),  # alpha dropped, grey kept
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),  # pure red
    ],
    ids=["F01", "F255", "I", "LA", "CMYK"],
)
def test_other_modes_become_8_bit_rgb(make, expected) -> None:
    from edgerep.images import to_rgb8

    x = to_rgb8(make())
    assert x.dtype == np.uint8 and x.shape == (4, 4, 3) and tuple(x[0, 0]) == expected


def test_palette_png_with_transparency_reads_its_colours_quietly(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.save(tmp_path / "p.png", transparency=b"\x00\x80")  # per-entry alpha: Pillow warns on convert("RGB")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = read_image(tmp_path / "p.png", Preprocess(4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    assert tuple(x[0, 0]) == (10, 200, 30)


def test_unreadable_image_folder_is_one_bad_input_error(tmp_path: Path, monkeypatch) -> None:
    folder = locked_folder(monkeypatch, tmp_path / "locked")
    with pytest.raises(BadInputError, match=r"cannot read image folder .*locked \(Permission denied\)"):
        list_images(folder)
