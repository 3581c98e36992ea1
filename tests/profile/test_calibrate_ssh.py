"""`edgerep calibrate ssh://...` end to end against the real local sshd of tests/conftest.py (this machine plays the
device), then `edgerep profile --device FILE` predicts from what was timed over ssh."""

from __future__ import annotations

import json

import pytest
from conftest import python_without_onnxruntime, ssh_cli_args

from edgerep.cli import main
from edgerep.profile.kernel_suite import build_onnx, sample_specs


@pytest.mark.slow
def test_calibrate_over_ssh_then_profile(sshd, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "remote.toml"
    argv = ["calibrate", sshd["url"], "-o", str(out), "--kernels", "pointwise,add", "--per-kernel", "2",
            "--budget", "5", "--json", *ssh_cli_args(sshd)]
    assert main(argv) == 0, capsys.readouterr().err
    d = json.loads(capsys.readouterr().out)
    assert d["device"] == sshd["url"] and d["fits"][0]["models"] == 4
    assert not (tmp_path / "remote.toml.partial.json").exists()
    onnx = build_onnx(sample_specs(1, seed=5, kernels=("pointwise",))[0], tmp_path / "m.onnx")
    assert main(["profile", str(onnx), "--device", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] > 0


def test_calibrate_remote_runtime_missing(sshd, tmp_path, capsys):  # noqa: F811
    wrapper = python_without_onnxruntime(tmp_path)
    args = ssh_cli_args(sshd)
    args[args.index("--remote-python") + 1] = str(wrapper)
    out = tmp_path / "remote.toml"
    argv = ["calibrate", sshd["url"], "-o", str(out), "--kernels", "add", "--per-kernel", "1", "--json", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnxruntime is not installed" in err
    assert not out.exists()


@pytest.mark.slow
def test_calibrate_litert_over_ssh_then_profile(sshd, tmp_path, capsys, monkeypatch):  # noqa: F811
    """The .tflite suite timed by the device's ai-edge-litert over ssh, then a .tflite predicted from it."""
    pytest.importorskip("litert_torch")
    from edgerep.profile.kernel_suite_tflite import build_tflite

    monkeypatch.setenv("EDGEREP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "remote_litert.toml"
    argv = ["calibrate", sshd["url"], "-o", str(out), "--runtime", "litert", "--kernels", "pointwise,add",
            "--per-kernel", "2", "--budget", "5", "--json", *ssh_cli_args(sshd)]
    assert main(argv) == 0, capsys.readouterr().err
    d = json.loads(capsys.readouterr().out)
    assert d["runtime"] == "litert" and d["fits"][0]["models"] == 4
    spec = sample_specs(1, seed=5, kernels=("pointwise",))[0]
    tflite = build_tflite([(spec, "int8")], tmp_path)[(spec, "int8")]
    assert main(["profile", str(tflite), "--device", str(out), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["latency_ms"] > 0 and p["precision"] == "int8"
