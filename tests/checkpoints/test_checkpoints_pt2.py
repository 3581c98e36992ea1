"""``.pt2`` programs in: read without running code from the file, re-parameterized, verified, exported.

The crafted files each carry a payload that would create a marker file if it ran (``os.system``); every one
must be refused with a ``BadInputError`` and the marker must not exist afterwards.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from style_models import TimmStyleNet
from torch import nn

from edgerep.api import deploy_program
from edgerep.checkpoints.pt2 import program_example, read_program
from edgerep.cli import main
from edgerep.errors import BadInputError
from edgerep.proof.numerics import randomize_bn
from edgerep.reparam.generic.count import executed_convs


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = randomize_bn(TimmStyleNet("repvgg")).eval()
    ep = torch.export.export(model, (torch.randn(2, 3, 32, 32),), strict=False,
                             dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = tmp_path_factory.mktemp("pt2") / "style.pt2"
    torch.export.save(ep, str(path))
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of the archive with ``edit(name, bytes) -> bytes`` applied to every member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))
    return dst


def test_program_is_read_reparameterized_and_verified(program, tmp_path):
    ep = read_program(program)
    x = program_example(ep, program)
    assert tuple(x.shape) == (1, 3, 32, 32)
    out = tmp_path / "deploy.pt2"
    result = deploy_program(program, output=out, latency=False)
    assert result.report.passed and result.report.worst_rel <= 1e-5
    xs = torch.randn(2, 3, 32, 32)
    source = ep.module()
    assert executed_convs(result.model, xs) == 4 < executed_convs(source, xs)
    again = read_program(out).module()  # the written deploy program is itself a safe, loadable .pt2
    with torch.no_grad():
        assert torch.allclose(again(xs), source(xs), rtol=1e-4, atol=1e-5)


def _assert_refused(path: Path, marker: Path, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        read_program(path)
    assert not marker.exists(), "code from the file ran"


def test_a_plain_pickle_renamed_pt2_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    torch.save({"model": _Payload(marker)}, str(path))  # a zip whose data.pkl calls os.system
    _assert_refused(path, marker, "no exported program inside")


def test_pickled_weight_is_refused_before_loading(program, tmp_path):
    marker = tmp_path / "ran"

    def edit(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("/weights/weight_0"):
            return pickle.dumps(_Payload(marker))
        return data

    _assert_refused(_rewrite(program, tmp_path / "w.pt2", edit), marker, "stored pickled")


def test_pickled_sample_input_cannot_run_code(program, tmp_path):
    """torch falls back to weights_only=False for sample inputs; edgerep forces weights-only loading."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save(_Payload(marker), str(evil))

    def edit(name, data):
        return evil.read_bytes() if "/sample_inputs/" in name else data

    _assert_refused(_rewrite(program, tmp_path / "s.pt2", edit), marker, "torch.export.load cannot read it")


@pytest.mark.parametrize("field, value, match", [
    ("target", "torch.os.system", "not an ATen op"),
    ("expr_str", "__import__('os').system('touch x')", "symbolic size"),
    ("guards_code", ["__import__('os').system('touch x')"], "guard code"),
])
def test_code_in_the_program_json_is_refused(program, tmp_path, field, value, match):
    def edit(name, data):
        if not name.endswith("models/model.json"):
            return data
        model = json.loads(data)
        if field == "guards_code":
            model["guards_code"] = value
        elif field == "target":
            model["graph_module"]["graph"]["nodes"][0]["target"] = value
        else:
            sizes = next(v for v in model["graph_module"]["graph"]["tensor_values"].values()
                         if any("as_expr" in s for s in v["sizes"]))["sizes"]
            next(s for s in sizes if "as_expr" in s)["as_expr"]["expr_str"] = value
        return json.dumps(model).encode()

    _assert_refused(_rewrite(program, tmp_path / "j.pt2", edit), tmp_path / "none", match)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: self.conv(t), lambda t: -t, (x,))


def test_cli_refuses_data_dependent_control_flow_and_crafted_files(tmp_path, capsys):
    path = tmp_path / "cond.pt2"
    torch.export.save(torch.export.export(_Branchy().eval(), (torch.randn(1, 3, 8, 8),), strict=False), str(path))
    assert main(["deploy", str(path), "--no-latency", "--no-images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "data-dependent control flow" in err[-1] and "Traceback" not in "\n".join(err)
    evil = tmp_path / "evil.pt2"
    torch.save(_Payload(tmp_path / "ran"), str(evil))
    assert main(["export", str(evil), "--target", "onnx", "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_cli_exports_a_program_to_onnx(program, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(program), "--target", "onnx", "--precision", "fp32", "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["model"] == "style" and (out / "style-fp32.onnx").is_file()
    manifest = json.loads((out / "style-fp32.onnx.json").read_text())
    assert manifest["input"]["shape"] == [1, 3, 32, 32] and manifest["source"]["layout"] == "pt2"


def _zoo_program(tmp_path: Path) -> Path:
    """The shipped RepGhostNet-0.5x checkpoint (train form) as a .pt2 program at its 32x32 input."""
    from edgerep import defaults
    from edgerep.checkpoints.load import load_model

    model, _ = load_model(defaults.default_model_name(), defaults.default_model_path(), form="train")
    ep = torch.export.export(model.eval(), (torch.randn(2, 3, 32, 32),), strict=False,
                             dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = tmp_path / "repghost.pt2"
    torch.export.save(ep, str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("which", ["style", "zoo"])
def test_cli_exports_a_program_to_every_target(program, tmp_path, capsys, which):
    path = program if which == "style" else _zoo_program(tmp_path)
    out = tmp_path / "out"
    code = main(["export", str(path), "--target", "onnx,tflite,coreml,executorch", "--precision", "fp32",
                 "-o", str(out), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"], result
    assert sorted(p.suffix for p in out.iterdir() if p.suffix != ".json") == [".mlpackage", ".onnx", ".pte", ".tflite"]
