"""`edgerep calibrate`: the kernel suite, the per-kernel fit, the device file, resuming, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgerep.cli import main
from edgerep.profile import calibrate as cal
from edgerep.profile.graph_cost import graph_cost
from edgerep.profile.kernel_suite import GROUP_WIDTHS, KERNELS, SAMPLES_X, build_onnx, sample_specs
from edgerep.profile.kernel_table import predict_table

SMALL = ("pointwise", "depthwise3x3s2", "act:hardswish", "add", "block:se")
TRUE = {"call": 20.0, "io": 100.0, "const": 3.0, "per_mwork": 40.0, "per_mb": 5.0, "per_kpos": 30.0}  # microseconds


def _synthetic_ms(path: Path) -> float:
    """A known latency law the fit must recover: per run (const + input/output elements) + per layer (const +
    work + bytes + positions)."""
    cost = graph_cost(path)
    us = TRUE["call"] + TRUE["io"] * cost.io_elements / 1e6 + sum(TRUE["const"] + TRUE["per_mwork"] * (lc.macs or lc.elements) / 1e6
                            + TRUE["per_mb"] * lc.bytes / 1e6 + TRUE["per_kpos"] * lc.positions / 1e3
                            for lc in cost.costed)
    return us / 1e3


@pytest.fixture
def fake_device(monkeypatch):
    """Replace the timer with the synthetic law; count the timed models."""
    timed: list[str] = []

    def fake_time(device, files, threads, ssh, adb):
        timed.extend(files)
        return {k: _synthetic_ms(p) for k, p in files.items()}

    monkeypatch.setattr(cal, "_time", fake_time)
    monkeypatch.setattr(cal, "_machine", lambda *a: {"cpu": "test cpu", "flags": "", "cores": 2, "mhz": 2000.0,
                                                     "runtime_version": "0.0-test"})
    return timed


def test_every_suite_kernel_builds_and_costs_as_its_kernel(tmp_path):
    for spec in sample_specs(1):
        for int8 in (False, True):
            cost = graph_cost(build_onnx(spec, tmp_path / f"{spec.id}_{int8}.onnx", int8))
            kernels = {lc.kernel for lc in cost.costed}
            want = {"block:se": "pool:global", "block:mbconv": "depthwise3x3s1",
                    "act:silu": "mul" if int8 else "act:silu",  # QDQ keeps x * sigmoid(x) as two ops
                    "gconv3x3s1": f"gconv3x3s1w{spec.width}", "gconv3x3s2": f"gconv3x3s2w{spec.width}"}
            assert want.get(spec.kernel, spec.kernel) in kernels, (spec, kernels)
            if spec.kernel == "act:silu" and not int8:
                assert "act:sigmoid" not in kernels  # one fp32 kernel, the sigmoid is inside it
            assert not cost.partial


def test_sample_specs_round_robin_and_reproducible():
    a, b = sample_specs(3), sample_specs(3)
    assert a == b
    assert [s.kernel for s in a[: len(KERNELS)]] == list(KERNELS)  # a budget cut still covers every kernel


def test_suite_samples_depths_and_group_widths(tmp_path):
    specs = sample_specs(12, kernels=("pointwise", "gconv3x3s1"))
    assert len({s.depth for s in specs if s.kernel == "pointwise"}) > 1
    grouped = [s for s in specs if s.kernel == "gconv3x3s1"]
    assert {s.width for s in grouped} == set(GROUP_WIDTHS) and len(grouped) == 12 * SAMPLES_X["gconv3x3s1"]
    assert all(s.cin % s.width == 0 and s.cin > s.width for s in grouped)
    spec = grouped[0]
    cost = graph_cost(build_onnx(spec, tmp_path / "g.onnx"))
    convs = [lc for lc in cost.costed if lc.kernel == f"gconv3x3s1w{spec.width}"]
    assert len(convs) == spec.depth
    assert all(lc.positions == spec.size ** 2 * spec.cin // spec.width for lc in convs)


def test_fit_recovers_a_known_law_and_predicts_unseen_models(fake_device, tmp_path):
    out = cal.calibrate("host", tmp_path / "dev.toml", per_kernel=6, kernels=SMALL, progress=False)
    device = cal.load_device_file(out)
    assert set(device.tables) == {("fp32", 1), ("int8", 1)}
    table = device.table("fp32", 1)
    assert table.median_abs_error < 0.01
    # chains of several depths tell the per-run cost from each kernel's own: neither absorbs the other
    assert table.call_us == pytest.approx(TRUE["call"], rel=0.1)
    assert table.io_us_per_melem == pytest.approx(TRUE["io"], rel=0.1)
    assert table.kernels["pointwise"].const_us == pytest.approx(TRUE["const"], rel=0.1)
    assert table.kernels["depthwise3x3s2"].us_per_kpos == pytest.approx(TRUE["per_kpos"], rel=0.1)
    # an unseen block of seen kernels; an unseen activation falls back to hard-swish's regressor and says so
    for kernel, fallback in (("block:mbconv", False), ("act:sigmoid", True)):
        path = build_onnx(sample_specs(1, seed=7, kernels=(kernel,))[0], tmp_path / "unseen.onnx")
        pred = predict_table(graph_cost(path), table)
        assert pred.ms == pytest.approx(_synthetic_ms(path), rel=0.05)
        assert any("same kind" in n for n in pred.notes) == fallback


def test_interrupted_calibration_resumes_and_writes_nothing_half(fake_device, tmp_path, monkeypatch):
    out = tmp_path / "dev.toml"
    real = cal._time
    calls = {"n": 0}

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(cal, "_time", flaky)
    with pytest.raises(KeyboardInterrupt):
        cal.calibrate("host", out, per_kernel=4, kernels=SMALL, progress=False)
    assert not out.exists()
    partial = json.loads((tmp_path / "dev.toml.partial.json").read_text())
    assert len(partial["ms"]) == 8  # one batch of 8 was timed and kept
    assert not list(tmp_path.glob(".*tmp"))
    first = len(fake_device)
    monkeypatch.setattr(cal, "_time", real)
    cal.calibrate("host", out, per_kernel=4, kernels=SMALL, progress=False)
    assert len(fake_device) - first == 2 * 4 * len(SMALL) - 8  # only what was missing
    assert out.is_file() and not (tmp_path / "dev.toml.partial.json").exists()


@pytest.fixture(scope="module")
def device_text(tmp_path_factory) -> str:
    """One device file from the synthetic law, shared by the tests that edit or read it."""
    tmp = tmp_path_factory.mktemp("dev")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cal, "_time", lambda device, files, *a: {k: _synthetic_ms(p) for k, p in files.items()})
        mp.setattr(cal, "_machine", lambda *a: {"cpu": "test cpu", "flags": "", "cores": 2, "mhz": 2000.0,
                                                "runtime_version": "0.0-test"})
        return cal.calibrate("host", tmp / "dev.toml", per_kernel=6, kernels=SMALL, progress=False).read_text()


def _device_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dev.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('edgerep_version = "', 'edgerep_version = "9.'), "written by edgerep 9."),
    (lambda t: t.replace("[calibrated]", "[calibratedx]"), "no \\[calibrated\\] section"),
    (lambda t: t.replace("const_us = ", "const_us = -", 1), "must be finite and >= 0"),
    (lambda t: t.replace("call_us = ", "call_uz = ", 1), "missing 'call_us'"),
    (lambda t: t + "\n[[[ nonsense", "not valid TOML"),
    (lambda t: t.split("[[kernels]]")[0], "missing 'kernels'"),
])
def test_bad_device_file_is_one_line_exit_2(device_text, tmp_path, capsys, edit, message):
    path = _device_file(tmp_path, device_text)
    path.write_text(edit(path.read_text()))
    onnx = build_onnx(sample_specs(1, kernels=("pointwise",))[0], tmp_path / "m.onnx")
    assert main(["profile", str(onnx), "--device", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: device file")
    assert pytest.importorskip("re").search(message, err), err


def test_profile_with_device_file_json(device_text, tmp_path, capsys):
    path = _device_file(tmp_path, device_text)
    onnx = build_onnx(sample_specs(1, kernels=("block:se",))[0], tmp_path / "m.onnx")
    assert main(["profile", str(onnx), "--device", str(path), "--json", "--layers", "3"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["label"] == "predicted" and d["latency_ms"] == pytest.approx(_synthetic_ms(onnx), rel=0.05)
    assert d["runtime_version"] == "0.0-test" and len(d["layers"]) == 3
    assert main(["profile", str(onnx), "--device", str(path), "--threads", "2"]) == 2
    assert "not calibrated for fp32 at 2 thread(s)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "host", "-o", "x.json"], "a device file is TOML"),
    (["calibrate", "host", "-o", "x.toml", "--runtime", "litert", "--kernels", "pool:reduce"],
     "not in the litert suite"),
    (["calibrate", "nowhere", "-o", "x.toml"], "unknown device 'nowhere'"),
    (["calibrate", "host", "-o", "x.toml", "--budget", "0"], "minutes > 0"),
    (["calibrate", "host", "-o", "x.toml", "--kernels", "conv9x9"], "unknown suite kernel 'conv9x9'"),
])
def test_calibrate_bad_options(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_calibrate_unreachable_device(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    argv = ["calibrate", f"ssh://nobody@127.0.0.1:{port}", "-o", str(tmp_path / "d.toml"), "--json",
            "--per-kernel", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreachable" in err
    assert not (tmp_path / "d.toml").exists()


@pytest.mark.slow
def test_calibrate_host_for_real_tiny(tmp_path, capsys):
    """The real timer on this host, a tiny suite: the device file predicts a model it never saw."""
    out = tmp_path / "host.toml"
    argv = ["calibrate", "host", "-o", str(out), "--per-kernel", "2", "--budget", "3", "--json",
            "--kernels", "pointwise,act:hardswish,add"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fits"][0]["models"] == 6 and "cpu" in d
    onnx = build_onnx(sample_specs(1, seed=3, kernels=("pointwise",))[0], tmp_path / "m.onnx")
    assert main(["profile", str(onnx), "--device", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] > 0


def test_fallback_prefers_the_closest_kernel_name():
    from edgerep.profile.graph_cost import LayerCost
    from edgerep.profile.kernel_table import KernelFit, KernelTable

    fits = {k: KernelFit(k, "conv", 1.0, 1.0, 1.0, 1.0, n) for k, n in
            (("conv3x3s1", 50), ("gconv3x3s1w8", 5), ("gconv3x3s2w16", 40))}
    table = KernelTable("fp32", 1, 0.0, 0.0, fits, 95, 0.0)
    fit, fallback = table.fit_for(LayerCost("g", "Conv", "conv", kernel="gconv3x3s1w16"))
    assert fallback and fit.kernel == "gconv3x3s1w8"
    assert table.fit_for(LayerCost("c", "Conv", "conv", kernel="conv5x5s1"))[0].kernel == "conv3x3s1"
