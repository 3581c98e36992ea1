"""ONNX export end to end: every precision validates against PyTorch, bad artifacts and bad input leave nothing."""

from __future__ import annotations

import json
import warnings
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CumMax
from torch import nn

from edgerep.backends import get_backend
from edgerep.backends.base import UnsupportedLayerError
from edgerep.checkpoints import load_model
from edgerep.defaults import default_images_dir, default_model_name, default_model_path, default_preprocess
from edgerep.errors import BadInputError, MissingDependencyError, VerificationError
from edgerep.export.pipeline import ExportWarning, export
from edgerep.fileio import sha256_path
from edgerep.images import Preprocess
from edgerep.proof.numerics import randomize_bn
from edgerep.reparam import reparameterize
from edgerep.reparam.blocks.repvgg import RepVGGBlock

PRE = Preprocess((16, 16))
INPUT = (3, 16, 16)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        RepVGGBlock(3, 8, act=nn.ReLU()),
        RepVGGBlock(8, 16, stride=2, act=nn.ReLU()),
        RepVGGBlock(16, 16, groups=16, act=nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return reparameterize(randomize_bn(net, torch.Generator().manual_seed(0)).eval())


def _export(model: nn.Module, out: Path, precision: str = "fp32", **kw):
    kw.setdefault("options", {"exporter": "torchscript"})  # 3x faster than dynamo; the dynamo path has its own test
    return export(model, name="tiny", target="onnx", precision=precision, input_size=INPUT, output_dir=out,
                  preprocess=PRE, labels=[str(i) for i in range(10)], **kw)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def fp32_result(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fp32")
    return _export(_tiny(), out, "fp32", options={"exporter": "dynamo"}, source=default_model_path())


def test_fp32_validates_on_images_and_random_inputs(fp32_result) -> None:
    r = fp32_result
    assert r.validation.passed and r.artifact.is_file() and r.artifact.suffix == ".onnx"
    kinds = {s.kind: s for s in r.validation.sets}
    assert set(kinds) == {"random"}  # no validation folder given
    assert kinds["random"].rel < 1e-5 and kinds["random"].top1_agreement == 1.0
    assert _leftovers(r.artifact.parent) == ["tiny-fp32.onnx", "tiny-fp32.onnx.json"]


def test_fp32_artifact_is_one_self_contained_file(fp32_result) -> None:
    import onnx

    proto = onnx.load(str(fp32_result.artifact))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 3  # fused: one conv per block, no branches


def test_manifest_records_what_an_app_needs(fp32_result) -> None:
    m = json.loads(fp32_result.manifest_path.read_text())
    assert m == fp32_result.manifest
    assert m["model"] == "tiny" and m["target"] == "onnx" and m["precision"] == "fp32"
    assert m["artifact"]["sha256"] == sha256_path(fp32_result.artifact) == fp32_result.sha256
    assert m["artifact"]["size_bytes"] == fp32_result.artifact.stat().st_size
    assert m["input"] == {"name": "input", "shape": [1, 3, 16, 16], "layout": "nchw", "dtype": "float32"}
    recipe = json.loads(default_model_path().with_suffix(".json").read_text())
    assert m["source"]["sha256"] == recipe["checkpoint_sha256"]
    assert m["preprocess"] == PRE.to_dict() and m["labels"] == [str(i) for i in range(10)]
    assert m["options"]["opset"] == 18 and m["validation"]["passed"] is True
    assert {"torch", "onnx", "onnxruntime", "onnxslim", "edgerep"} <= set(m["tools"])


def test_fp16_keeps_float32_io_and_validates(tmp_path: Path) -> None:
    r = _export(_tiny(), tmp_path, "fp16", validation=torch.randn(16, *INPUT))
    assert r.validation.passed and r.manifest["input"]["dtype"] == "float32"
    worst = max(s.rel for s in r.validation.sets)
    assert 0 < worst < r.validation.tolerance["rel"]
    backend = get_backend("onnx")
    x = torch.randn(3, *INPUT)  # more inputs than the graph's batch of 1: run() feeds them one by one
    assert backend.run(r.artifact, x.numpy()).shape == (3, 10)


def test_int8_of_the_shipped_model_on_real_photos(tmp_path: Path) -> None:
    model, info = load_model(default_model_name(), default_model_path())
    deployed = reparameterize(model)
    pre = default_preprocess()
    with pytest.warns(ExportWarning, match="only 200 calibration images"):
        r = export(deployed, name=default_model_name(), target="onnx", precision="int8", input_size=(3, *pre.size),
                   output_dir=tmp_path, preprocess=pre, calibration=default_images_dir(), source=info)
    photos = next(s for s in r.validation.sets if s.kind == "images")
    assert photos.n == 200 and photos.top1_agreement >= 0.85 and photos.cosine >= 0.95
    assert photos.accuracy_artifact >= photos.accuracy_reference - 0.1  # the folder's class labels are used
    q = r.manifest["quantization"]
    assert q["scheme"] == "qdq-per-channel" and q["calibration_images"] == 200 and "scale" in q["input"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(r.artifact)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert not ops & {"ConvInteger", "DynamicQuantizeLinear", "MatMulInteger"}  # never dynamic quantization
    assert r.size_bytes < 0.5 * 4_188_571  # well under the fp32 file


@pytest.mark.parametrize("side, warned", [(4, True), (12, False)])
def test_int8_warns_about_photos_far_smaller_than_the_input(tmp_path: Path, side: int, warned: bool) -> None:
    """4 px photos for a 16 px input are upscaled 4x: calibrated, but with a warning in the manifest."""
    from PIL import Image

    photos = tmp_path / "calib"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (side, side + 2, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = _export(_tiny(), tmp_path / "out", "int8", calibration=photos, tolerance={"top1_agreement": 0.0})
    upscaled = [str(w.message) for w in seen if "upscaled" in str(w.message)]
    assert bool(upscaled) == warned and (not warned or f"about {side} px" in upscaled[0])
    assert any("upscaled" in n for n in r.manifest["notes"]) == warned


def test_int8_floor_is_configurable_and_failure_keeps_nothing(tmp_path: Path) -> None:
    calib = torch.randn(16, *INPUT)
    floor = "cosine 0.9.* < 1 on 16 calibration images"
    with pytest.warns(ExportWarning), pytest.raises(VerificationError, match=floor) as exc:
        _export(_tiny(), tmp_path, "int8", calibration=calib, tolerance={"cosine": 1.0})
    assert exc.value.report.failures and _leftovers(tmp_path) == []


def test_a_wrong_artifact_fails_validation_and_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    backend = get_backend("onnx")
    original = backend.export
    wrong = _tiny()
    with torch.no_grad():
        wrong[-1].bias.add_(0.5)  # a plausible bug: the classifier bias off by 0.5

    monkeypatch.setattr(backend, "export", lambda model, request, path: original(wrong, request, path))
    with pytest.raises(VerificationError, match=r"rel [0-9.e-]+ > 0.0001 .*\(nothing was written\)") as exc:
        _export(_tiny(), tmp_path / "out", "fp32")
    assert not exc.value.report.passed
    assert _leftovers(tmp_path / "out") == []  # not even the hidden staging folder


def test_interrupted_export_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    backend = get_backend("onnx")

    def interrupted(model, request, path):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _export(_tiny(), tmp_path, "fp32")
    assert _leftovers(tmp_path) == []


def test_bad_input_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    backend = get_backend("onnx")
    monkeypatch.setattr(backend, "export", lambda *a: pytest.fail("export must not start"))
    model = _tiny()
    with pytest.raises(BadInputError, match="needs calibration images: pass --calib DIR"):
        _export(model, tmp_path, "int8")
    with pytest.raises(BadInputError, match="does not exist"):
        _export(model, tmp_path, "int8", calibration=tmp_path / "nope")
    with pytest.raises(BadInputError, match="has 5 images; onnx int8 needs at least 16"):
        _export(model, tmp_path, "int8", calibration=torch.randn(5, *INPUT))
    few = tmp_path / "few"
    few.mkdir()
    for i, f in enumerate(sorted(default_images_dir().rglob("*.jpg"))[:3]):
        (few / f"{i}.png").write_bytes(f.read_bytes())
    with pytest.raises(BadInputError, match="has 3 images"):
        _export(model, tmp_path, "int8", calibration=few)
    with pytest.raises(BadInputError, match="no precision 'int4'"):
        _export(model, tmp_path, "int4")
    with pytest.raises(BadInputError, match="option opset=9 is not allowed"):
        _export(model, tmp_path, options={"opset": 9})
    with pytest.raises(BadInputError, match="re-param blocks in the train form; deploy it first"):
        export(RepVGGBlock(3, 8), name="b", target="onnx", input_size=INPUT, output_dir=tmp_path, preprocess=PRE)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BadInputError, match="cannot create output folder"):
        _export(model, blocker / "out", "fp32")
    assert _leftovers(tmp_path) == ["few", "file"]


def test_missing_dependency_gives_a_one_line_install_hint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    monkeypatch.delitem(sys.modules, "edgerep.backends.onnx", raising=False)
    with pytest.raises(MissingDependencyError) as exc:
        get_backend("onnx")
    msg = str(exc.value)
    assert "onnxruntime" in msg and 'pip install "edgerep[onnx]"' in msg and "\n" not in msg
    with pytest.raises(MissingDependencyError):
        _export(_tiny(), tmp_path / "out", "fp32")
    assert not (tmp_path / "out").exists() or _leftovers(tmp_path / "out") == []


@pytest.mark.parametrize(("exporter", "op"), [("torchscript", "aten::cummax"), ("dynamo", "aten.cummax")])
def test_unsupported_layer_is_named_with_its_op_and_nothing_is_kept(tmp_path: Path, exporter: str, op: str) -> None:
    head = nn.Sequential(OrderedDict(act=nn.ReLU(), pool=CumMax()))
    model = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 1), head=head, flat=nn.Flatten())).eval()
    with pytest.raises(UnsupportedLayerError) as exc:
        _export(model, tmp_path / "out", options={"exporter": exporter})
    msg = str(exc.value)
    assert f"onnx cannot convert layer head.pool (CumMax): op {op} is not supported" in msg, msg
    other = "dynamo" if exporter == "torchscript" else "torchscript"
    assert f"--option exporter={other}" in msg and "\n" not in msg and exc.value.exit_code == 2
    assert _leftovers(tmp_path / "out") == []


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(BadInputError, match="unknown backend 'tensorrt'"):
        get_backend("tensorrt")
