"""The ARM code path without a device: the cached aarch64 Python under qemu, and `edgerep validate`.

Fast tests cover the refusals (no qemu, no apt, a file that cannot run) without emulating anything. The slow ones
build (or reuse) the cached aarch64 root in ~/.cache/edgerep/aarch64 - a few minutes the first time, needs
qemu-user-static, apt-get and the package registries - and compare ARM and x86 outputs of small models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgerep.cli import main as cli_main
from edgerep import resources
from edgerep.devices import emulate
from edgerep.errors import BadInputError

slow = pytest.mark.slow


# --- refusals, no emulation needed ------------------------------------------------------------------------------

def test_no_qemu_is_a_one_line_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(emulate.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(emulate.shutil, "which", lambda name: None)
    assert "apt-get install qemu-user-static" in emulate.emulation_problem()
    with pytest.raises(BadInputError, match="cannot emulate aarch64: qemu-aarch64-static is not installed"):
        emulate.aarch64_python(tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was created


def test_no_apt_is_a_one_line_reason(monkeypatch):
    monkeypatch.setattr(emulate.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(emulate.shutil, "which", lambda name: "/usr/bin/qemu-aarch64-static" if "qemu" in name
                        else None)
    assert "fetched with apt-get/dpkg" in emulate.emulation_problem()


def test_other_host_architectures(monkeypatch):
    monkeypatch.setattr(emulate.platform, "machine", lambda: "aarch64")
    assert emulate.emulation_problem() is None  # already ARM: runs natively
    assert emulate.aarch64_python().command() == [sys.executable]
    monkeypatch.setattr(emulate.platform, "machine", lambda: "riscv64")
    assert "x86_64 hosts" in emulate.emulation_problem()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEREP_CACHE", str(tmp_path / "c"))
    assert resources.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EDGEREP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert resources.cache_dir() == tmp_path / "x" / "edgerep"


def test_validate_refuses_unrunnable_inputs(tmp_path, capsys):
    coreml = tmp_path / "m.mlpackage"
    coreml.mkdir()
    assert cli_main(["validate", str(coreml), "--random", "2"]) == 2
    assert "only .onnx and .tflite" in capsys.readouterr().err
    onnx_file = tmp_path / "m.onnx"
    _tiny_onnx(onnx_file)
    assert cli_main(["validate", str(onnx_file)]) == 2  # no manifest: preprocessing unknown
    err = capsys.readouterr().err
    assert "has no manifest" in err and "--random N" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["validate", str(tmp_path / "missing.onnx"), "--random", "2"]) == 2


def test_incompatible_artifact_is_refused_before_any_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEREP_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BadInputError, match="does not run on this host: .*artifact-incompatible") as err:
        emulate.compare_with_host(bad, np.zeros((1, 3, 8, 8), np.float32), "zeros")
    assert "\n" not in str(err.value) and not (tmp_path / "cache").exists()


def test_validate_min_agreement_fails_with_exit_1(tmp_path, monkeypatch, capsys):
    onnx_file = tmp_path / "m.onnx"
    _tiny_onnx(onnx_file)
    machine = {"machine": "x86_64", "python": "3.11"}
    side = {"runtime": "onnxruntime", "runtime_version": "1", "machine": machine}
    seen = {}

    def fake_compare(artifact, inputs, description, **_kw):  # stands in for the emulated run
        seen["shape"] = inputs.shape
        return emulate.ArchComparison(str(artifact), description, len(inputs), side, {**side, "emulated": True},
                                      0.5, 0.1, 0.75, 1.0, 0.0)

    monkeypatch.setattr(emulate, "compare_with_host", fake_compare)
    assert cli_main(["validate", str(onnx_file), "--random", "4", "--min-agreement", "0.9"]) == 1
    out, err = capsys.readouterr()
    assert "top-1 agreement 0.750" in out and "below --min-agreement 0.9" in err
    assert seen["shape"] == (4, 3, 8, 8)  # random inputs shaped from the file itself (no manifest)
    assert cli_main(["validate", str(onnx_file), "--random", "4", "--min-agreement", "0.7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


# --- under emulation (slow: builds or reuses the cached root) ------------------------------------------------------

@pytest.fixture(scope="module")
def arm_python():
    problem = emulate.emulation_problem()
    if problem:
        pytest.skip(f"aarch64 emulation impossible here: {problem}")
    return emulate.aarch64_python(progress=lambda msg: print(msg, file=sys.stderr))


@slow
def test_root_is_cached_and_runs_aarch64(arm_python):
    assert arm_python.info["root_version"] == emulate.ROOT_VERSION
    again = emulate.aarch64_python()
    assert again.python == arm_python.python  # second call: the cached root, no rebuild
    import subprocess

    out = subprocess.run([*arm_python.command(), "-c", "import platform; print(platform.machine())"],
                         capture_output=True, text=True, env=arm_python.env(), check=True).stdout
    assert out.strip() == "aarch64"


@slow
def test_onnx_arm_vs_x86(arm_python, tmp_path):
    path = tmp_path / "tiny.onnx"
    _tiny_onnx(path)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    r = emulate.compare_with_host(path, x, "4 random inputs")
    assert r.arm["machine"]["machine"] == "aarch64" and r.host["machine"]["machine"] == "x86_64"
    assert r.arm["runtime_version"] == r.host["runtime_version"]  # same onnxruntime release on both sides
    assert r.max_abs < 1e-4 and r.top1_agreement == 1.0  # fp32 conv: ARM and x86 kernels agree to rounding


@slow
def test_tflite_cli_json(arm_python, tmp_path, capsys):
    from edgerep.backends.base import ExportRequest
    from edgerep.backends.tflite import BACKEND

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5)).eval()
    path = tmp_path / "tiny.tflite"
    BACKEND.export(model, ExportRequest((1, 3, 8, 8), "fp32"), path)
    assert cli_main(["validate", str(path), "--random", "3", "--json", "--min-agreement", "1.0"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_inputs"] == 3 and d["arm"]["runtime"] == "ai-edge-litert" and d["arm"]["emulated"] is True
    assert d["max_abs"] < 1e-4 and d["top1_agreement"] == 1.0


def _tiny_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))

