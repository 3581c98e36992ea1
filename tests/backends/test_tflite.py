"""The TFLite backend against PyTorch: fp32 / fp16 / int8, NCHW and NHWC input, on a small RepVGG-style net
and on the shipped model with its real photos.

litert-torch conversion is slow (a few seconds for the small net, ~20 s fp32 / ~50 s int8 for the shipped
model on this 2-core host), so each artifact is built once per module and the shipped fp32/fp16 checks are
marked slow; the shipped int8 check (real photos, the one that matters) always runs.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CumMax
from torch import nn

pytest.importorskip("litert_torch", reason="litert-torch is not installed (pip install 'edgerep[tflite]')")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install 'edgerep[tflite]')")

from edgerep.backends import get_backend  # noqa: E402
from edgerep.backends.base import ExportRequest, UnsupportedLayerError  # noqa: E402
from edgerep.checkpoints import (
    Checkpoint,  # noqa: E402
    load_model,  # noqa: E402
)
from edgerep.defaults import default_images_dir, default_model_path  # noqa: E402
from edgerep.errors import BadInputError  # noqa: E402
from edgerep.export.targets import get_target  # noqa: E402
from edgerep.images import load_images  # noqa: E402
from edgerep.proof.numerics import output_error, randomize_bn  # noqa: E402
from edgerep.reparam import reparameterize  # noqa: E402
from edgerep.reparam.blocks.repvgg import RepVGGBlock  # noqa: E402

BACKEND = get_backend("tflite")
SHAPE = (1, 3, 32, 32)
TARGET = get_target("tflite")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image cosine similarity of two (N, classes) outputs."""
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def export(model: nn.Module, path: Path, precision: str, layout: str = "nchw", calib=None) -> Path:
    BACKEND.export(model, ExportRequest(SHAPE, precision, calibration=calib, layout=layout), path)
    return path


@pytest.fixture(scope="module")
def small() -> nn.Module:
    """Depthwise, strided and identity RepVGG blocks with random BN statistics, fused."""
    torch.manual_seed(0)
    net = nn.Sequential(
        RepVGGBlock(3, 8, stride=2),
        RepVGGBlock(8, 8),
        RepVGGBlock(8, 16, stride=2),
        RepVGGBlock(16, 16, groups=16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    randomize_bn(net, torch.Generator().manual_seed(0))
    return reparameterize(net.eval()).eval()


@pytest.fixture(scope="module")
def photos() -> tuple[torch.Tensor, np.ndarray]:
    """The 200 shipped photos, preprocessed as the shipped model was trained, and their labels."""
    pre = Checkpoint.open(default_model_path()).preprocess("repghostnet_050")
    batch = load_images(default_images_dir(), pre)
    return batch.images, batch.labels.numpy()


@pytest.fixture(scope="module")
def shipped() -> nn.Module:
    model, _ = load_model("repghostnet_050", default_model_path())
    return reparameterize(model).eval()


@pytest.fixture(scope="module")
def small_artifacts(small, photos, tmp_path_factory) -> dict[tuple[str, str], Path]:
    tmp = tmp_path_factory.mktemp("tflite-small")
    calib = photos[0][:32]
    return {
        (p, layout): export(small, tmp / f"{p}_{layout}.tflite", p, layout, calib if p == "int8" else None)
        for p, layout in [("fp32", "nchw"), ("fp16", "nchw"), ("int8", "nchw"), ("fp32", "nhwc"), ("int8", "nhwc")]
    }


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_small_fp32_matches_pytorch(small, photos, small_artifacts, layout):
    x = torch.cat([photos[0][:16], torch.randn(8, *SHAPE[1:], generator=torch.Generator().manual_seed(1))])
    out = BACKEND.run(small_artifacts["fp32", layout], x.numpy())
    assert out.dtype == np.float32 and out.shape == (24, 10)
    err = output_error(torch.from_numpy(_reference(small, x)), torch.from_numpy(out))
    assert err.rel <= 1e-5, f"{layout}: rel error {err.rel:.3g}"


def test_small_fp16_halves_weights(small, photos, small_artifacts):
    x = photos[0][:32]
    out = BACKEND.run(small_artifacts["fp16", "nchw"], x.numpy())
    ref = _reference(small, x)
    assert output_error(torch.from_numpy(ref), torch.from_numpy(out)).rel <= TARGET.precisions["fp16"].tolerance["rel"]
    assert small_artifacts["fp16", "nchw"].stat().st_size < small_artifacts["fp32", "nchw"].stat().st_size


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_small_int8_has_int8_io_and_tracks_pytorch(small, photos, small_artifacts, layout):
    import ai_edge_litert.interpreter as tfl

    path = small_artifacts["int8", layout]
    interp = tfl.Interpreter(model_path=str(path))
    inp = interp.get_input_details()[0]
    assert inp["dtype"] == np.int8 and inp["quantization"][0] > 0
    assert tuple(inp["shape"]) == ((1, 32, 32, 3) if layout == "nhwc" else SHAPE)
    x = photos[0][32:96]
    out = BACKEND.run(path, x.numpy())
    assert out.dtype == np.float32
    assert cosine(out, _reference(small, x)) >= 0.99


def test_int8_float_output_classifier_has_int8_weights(small, photos, small_artifacts):
    """With float logits (the default) the classifier keeps float input and output but int8 weights (dynamic
    range, XNNPACK quantizes its input at run time): a float classifier streamed its float weights per image."""
    import ai_edge_litert.interpreter as tfl

    interp = tfl.Interpreter(model_path=str(small_artifacts["int8", "nchw"]))
    dtype = {t["index"]: np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    (fc,) = [op for op in interp._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    assert [dtype[i] for i in fc["inputs"][:2]] == [np.float32, np.int8] and dtype[fc["outputs"][0]] == np.float32
    assert interp.get_output_details()[0]["dtype"] == np.float32


def test_nhwc_artifact_takes_channels_last_input_without_transpose(small_artifacts):
    import ai_edge_litert.interpreter as tfl

    def ops(path: Path) -> list[str]:
        return [op["op_name"] for op in tfl.Interpreter(model_path=str(path))._get_ops_details()]

    interp = tfl.Interpreter(model_path=str(small_artifacts["fp32", "nhwc"]))
    assert tuple(interp.get_input_details()[0]["shape"]) == (1, 32, 32, 3)
    assert "TRANSPOSE" in ops(small_artifacts["fp32", "nchw"])  # the converter computes channels-last inside
    assert "TRANSPOSE" not in ops(small_artifacts["fp32", "nhwc"])


def test_int8_without_calibration_is_refused(small, tmp_path):
    with pytest.raises(BadInputError, match="calibration"):
        export(small, tmp_path / "m.tflite", "int8")
    with pytest.raises(BadInputError, match="calibration"):
        export(small, tmp_path / "m.tflite", "int8", calib=torch.zeros(0, *SHAPE[1:]))
    assert not (tmp_path / "m.tflite").exists()


def test_bad_requests_are_refused_up_front(small, tmp_path):
    with pytest.raises(BadInputError, match="shape"):
        export(small, tmp_path / "m.tflite", "int8", calib=torch.zeros(4, 3, 16, 16))
    with pytest.raises(BadInputError, match="precision"):  # the target file refuses it before the backend runs
        TARGET.precision("int4")
    with pytest.raises(BadInputError, match="batch 1"):
        BACKEND.export(small, ExportRequest((2, 3, 32, 32), "fp32"), tmp_path / "m.tflite")
    with pytest.raises(BadInputError, match="layout"):
        TARGET.resolve_layout("nc")


def test_run_refuses_inputs_of_the_wrong_shape(small_artifacts):
    with pytest.raises(BadInputError, match="takes input"):
        BACKEND.run(small_artifacts["fp32", "nchw"], np.zeros((1, 3, 16, 16), np.float32))


def test_unsupported_layer_is_named_with_its_op(tmp_path):
    head = nn.Sequential(OrderedDict(act=nn.ReLU(), pool=CumMax()))
    model = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 1), head=head)).eval()
    with pytest.raises(UnsupportedLayerError) as exc:
        export(model, tmp_path / "m.tflite", "fp32", layout="nhwc")  # the layer is named in the user's model
    msg = str(exc.value)
    assert "tflite cannot convert layer head.pool (CumMax): op aten.cummax.default is not supported by litert-torch" \
        in msg
    assert "Lowering not found" in msg and "another target" in msg and "\n" not in msg
    assert exc.value.exit_code == 2 and not (tmp_path / "m.tflite").exists()


def test_shipped_int8_on_real_photos(shipped, photos, tmp_path):
    """Full-integer int8 calibrated on the 200 shipped photos: measured cosine 0.996, agreement 0.945."""
    images, labels = photos
    path = export(shipped, tmp_path / "int8.tflite", "int8", calib=images)
    out = BACKEND.run(path, images.numpy())
    ref = _reference(shipped, images)
    tol = TARGET.precisions["int8"].tolerance
    assert cosine(out, ref) >= max(tol["cosine"], 0.99)
    assert agreement(out, ref) >= max(tol["top1_agreement"], 0.9)
    assert (out.argmax(1) == labels).mean() >= (ref.argmax(1) == labels).mean() - 0.05


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_shipped_float_on_real_photos(shipped, photos, tmp_path, precision):
    images, _ = photos
    path = export(shipped, tmp_path / f"{precision}.tflite", precision)
    out = BACKEND.run(path, images.numpy())
    ref = _reference(shipped, images)
    tol = TARGET.precisions[precision].tolerance
    assert output_error(torch.from_numpy(ref), torch.from_numpy(out)).rel <= tol["rel"]
    assert cosine(out, ref) >= tol["cosine"] and agreement(out, ref) >= tol["top1_agreement"]
