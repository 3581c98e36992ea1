"""The ssh device path against a real OpenSSH server started here on 127.0.0.1 with a throwaway key.

The "device" is this machine: its Python (sys.executable) plays the remote Python. sshd runs in the foreground
(-D -e) with its own config, host key and authorized_keys in a temporary folder; it needs root (CI has it) and
Debian's openssh-server. Without sshd the tests skip locally and fail under CI=true, where .ci/run installs it. The ``sshd`` fixture is in conftest.py
(the calibration and Ray tests use the same server).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, python_without_onnxruntime

from edgerep.devices.result import DeviceError
from edgerep.devices.ssh import SshOptions, parse_ssh_url, run_over_ssh
from edgerep.errors import BadInputError


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A 1x3x8x8 -> 1x4 conv + global-average-pool model, built directly with onnx.helper (no export needed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Flatten", ["g"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_run_times_profiles_and_returns_outputs(sshd, tiny_onnx):
    from edgerep.backends.onnx import BACKEND

    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    before = set(Path("/tmp").glob("edgerep.*"))
    r = run_over_ssh(tiny_onnx, sshd["url"], runs=5, warmup=1, profile=True, inputs=x, ssh=SshOptions(**sshd["opts"]))
    assert not r.partial and r.error is None
    assert r.timing.count == 5 and len(r.timing.runs_ms) == 5
    assert r.timing.min_ms <= r.timing.median_ms <= r.timing.p90_ms <= r.timing.max_ms
    assert r.runtime.startswith("onnxruntime") and r.machine["executable"] == sys.executable
    assert {o.op for o in r.ops} >= {"Conv"}  # onnxruntime's per-node profile came back
    np.testing.assert_allclose(r.outputs, BACKEND.run(tiny_onnx, x), rtol=1e-6, atol=1e-6)
    d = r.to_dict()
    assert d["device"] == sshd["url"] and d["timing"]["spread_ms"] >= 0
    assert set(Path("/tmp").glob("edgerep.*")) == before  # the remote work folder was removed


def test_unreachable_host(sshd, tiny_onnx):
    url = f"ssh://{sshd['user']}@127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(DeviceError, match="host unreachable"):
        run_over_ssh(tiny_onnx, url, ssh=SshOptions(**{**sshd["opts"], "connect_timeout": 3}))


def test_auth_failure(sshd, tiny_onnx):
    opts = {**sshd["opts"], "identity": str(sshd["dir"] / "wrong_key")}
    with pytest.raises(DeviceError, match="authentication failed"):
        run_over_ssh(tiny_onnx, sshd["url"], ssh=SshOptions(**opts))


def test_remote_python_missing(sshd, tiny_onnx):
    with pytest.raises(DeviceError, match="cannot run the remote Python"):
        run_over_ssh(tiny_onnx, sshd["url"], ssh=SshOptions(**{**sshd["opts"], "python": "/nonexistent/python3"}))


def test_remote_runtime_missing(sshd, tiny_onnx, tmp_path):
    wrapper = python_without_onnxruntime(tmp_path)
    with pytest.raises(DeviceError, match="runtime-missing: onnxruntime is not installed") as err:
        run_over_ssh(tiny_onnx, sshd["url"], ssh=SshOptions(**{**sshd["opts"], "python": str(wrapper)}))
    assert err.value.result.partial and err.value.result.machine["python"]  # what was learned is kept


def test_incompatible_artifact_keeps_partial_result(sshd, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an onnx protobuf")
    with pytest.raises(DeviceError, match="artifact-incompatible") as err:
        run_over_ssh(bad, sshd["url"], ssh=SshOptions(**sshd["opts"]))
    assert "\n" not in str(err.value)
    result = err.value.result
    assert result.partial and result.error and result.timing.count == 0
    assert result.machine["machine"]  # the device was reached and described before the failure


def test_wrong_inputs_keep_the_timings_measured_before(sshd, tiny_onnx):
    x = np.zeros((2, 3, 16, 16), np.float32)  # the model takes 8x8
    with pytest.raises(DeviceError, match="bad-inputs: model input is \\[1, 3, 8, 8\\]") as err:
        run_over_ssh(tiny_onnx, sshd["url"], runs=4, warmup=0, inputs=x, ssh=SshOptions(**sshd["opts"]))
    result = err.value.result
    assert result.partial and result.timing.count == 4 and result.outputs is None


def test_parse_ssh_url():
    assert parse_ssh_url("ssh://pi@10.0.0.2:2222").port == 2222
    dev = parse_ssh_url("ssh://board")
    assert (dev.host, dev.user, dev.port, dev.destination) == ("board", None, None, "board")
    assert parse_ssh_url("ssh://u@[::1]:22").host == "::1"
    for bad in ("pi@host", "ssh://", "ssh://u@h:99999", "ssh://u@h:port", "adb:123"):
        with pytest.raises(BadInputError):
            parse_ssh_url(bad)


def test_missing_artifact_and_identity(tmp_path, tiny_onnx):
    with pytest.raises(BadInputError, match="does not exist"):
        run_over_ssh(tmp_path / "nope.onnx", "ssh://u@127.0.0.1:1")
    with pytest.raises(BadInputError, match="identity file"):
        run_over_ssh(tiny_onnx, "ssh://u@127.0.0.1:1", ssh=SshOptions(identity=str(tmp_path / "no_key")))


def test_profile_command_measures_over_ssh(sshd, tiny_onnx, capsys):
    from edgerep.cli import main

    opts = sshd["opts"]
    argv = ["profile", str(tiny_onnx), "--device", sshd["url"], "--identity", opts["identity"],
            "--remote-python", opts["python"], "--json"]
    for option in opts["options"]:
        argv += ["--ssh-option", option]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["device"] == sshd["url"] and d["timing"]["median_ms"] > 0 and not d["partial"]


def test_profile_command_unreachable_host_exits_2(sshd, tiny_onnx, capsys):
    from edgerep.cli import main

    url = f"ssh://{sshd['user']}@127.0.0.1:{free_port()}"
    assert main(["profile", str(tiny_onnx), "--device", url, "--identity", sshd["opts"]["identity"]]) == 2
    assert "127.0.0.1" in capsys.readouterr().err
