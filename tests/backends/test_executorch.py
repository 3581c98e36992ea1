"""ExecuTorch backend (.pte, XNNPACK delegate): artifacts are run with ExecuTorch's runtime and compared with PyTorch.

Small conv nets keep lowering fast; int8 is calibrated and judged on real shipped photos. One test goes through
``edgerep.export.pipeline`` (target file + backend module, nothing else), which is the design's test of a new target.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch", reason="executorch is not installed (pip install 'edgerep[executorch]')")

from edgerep.backends.base import ExportRequest  # noqa: E402
from edgerep.backends.executorch import BACKEND  # noqa: E402
from edgerep.defaults import default_images_dir  # noqa: E402
from edgerep.errors import BadInputError  # noqa: E402
from edgerep.export.pipeline import export  # noqa: E402
from edgerep.export.targets import get_target  # noqa: E402
from edgerep.images import Preprocess, list_images, load_images  # noqa: E402

PRE = Preprocess.for_input((3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 1.0)


def _net() -> nn.Module:
    """Plain conv, strided conv, depthwise conv, residual add, pool, linear: what fused re-param nets are made of."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
            self.pool = nn.AdaptiveAvgPool2d(1)  # XNNPACK takes it; x.mean((2, 3)) stays on a portable kernel
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.down(self.stem(x))
            x = torch.relu(x + self.dw(x))
            return self.head(self.pool(x).flatten(1))

    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return load_images(list_images(default_images_dir()).files[::5], PRE).images  # 40 photos, every class


def _run(model: nn.Module, x: torch.Tensor, request: ExportRequest, path):
    info = BACKEND.export(model, request, path)
    with torch.no_grad():
        ref = model(x).numpy()
    return info, BACKEND.run(path, x.numpy()), ref


def test_fp32_matches_pytorch(tmp_path, photos):
    info, out, ref = _run(_net(), photos, ExportRequest((1, 3, 32, 32), "fp32"), tmp_path / "m.pte")
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5
    assert any("XNNPACK delegate: 1 subgraph" in n for n in info.notes), info.notes
    assert not any("portable" in n for n in info.notes), info.notes


def test_fixed_batch_is_fed_in_chunks(tmp_path, photos):
    _, out, ref = _run(_net(), photos[:8], ExportRequest((4, 3, 32, 32), "fp32"), tmp_path / "m.pte")
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5
    with pytest.raises(BadInputError, match="batches of 4"):
        BACKEND.run(tmp_path / "m.pte", photos[:6].numpy())


def test_int8_calibrated_on_real_photos(tmp_path, photos):
    calib, val = photos[:24], photos[24:]
    request = ExportRequest((1, 3, 32, 32), "int8", calibration=calib)
    info, out, ref = _run(_net(), val, request, tmp_path / "m.pte")
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.85
    assert 0 < np.abs(out - ref).max()  # really quantized, not a float program
    assert info.quantization["calibration_images"] == 24
    assert info.quantization["scheme"] == "pt2e-xnnpack-per-channel"


def test_int8_budget_keeps_layers_in_float(tmp_path, photos):
    """int8_budget = every conv/linear layer: their weights stay float (the residual add and the activations around it
    stay int8), so the program is much closer to PyTorch than the all-int8 one (measured: 0.56x its error)."""
    calib, val = photos[:32], photos[32:]
    errors = {}
    for budget in (0, 4):
        opts = get_target("executorch").resolve_options({"int8_budget": budget})
        request = ExportRequest((1, 3, 32, 32), "int8", calibration=calib, options=opts)
        info, out, ref = _run(_net(), val, request, tmp_path / f"m{budget}.pte")
        errors[budget] = np.abs(out - ref).max() / np.abs(ref).max()
    assert sorted(info.quantization["float_layers"]) == ["down.0", "dw", "head", "stem.0"]
    assert errors[4] < 0.75 * errors[0], errors


def test_int8_needs_calibration(tmp_path):
    with pytest.raises(BadInputError, match="calibration images"):
        BACKEND.export(_net(), ExportRequest((1, 3, 32, 32), "int8"), tmp_path / "m.pte")
    assert not (tmp_path / "m.pte").exists()


def test_export_validates_and_writes_manifest(tmp_path, photos):
    """The whole edgerep.export.pipeline path for the new target: target file read, artifact validated, manifest written."""
    target = get_target("executorch")
    assert set(target.precisions) == {"fp32", "int8"}
    with pytest.raises(BadInputError, match="no precision 'fp16'"):
        export(_net(), name="net", target="executorch", precision="fp16", input_size=(3, 32, 32),
               output_dir=tmp_path, preprocess=PRE)
    result = export(_net(), name="net", target="executorch", precision="fp32", input_size=(3, 32, 32),
                    output_dir=tmp_path, preprocess=PRE, validation=photos)
    assert result.validation.passed and result.artifact.name == "net-fp32.pte"
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["target"] == "executorch" and manifest["tools"]["executorch"] == "1.5.1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net-fp32.pte", "net-fp32.pte.json"]
