"""The adb device path: benchmark_model flags, parsing of real recorded outputs, and every failure mode.

The outputs in tests/fixtures/adb/ are real benchmark_model outputs from public sources (see its README). A fake
`adb` (a small script on PATH) plays the phone: it answers `adb devices`, records every call, and replays a
fixture as benchmark_model's output with a chosen exit status.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerep.devices.adb import (
    BenchmarkOptions,
    benchmark_flags,
    big_core_mask,
    parse_benchmark_output,
    run_over_adb,
)
from edgerep.devices.result import DeviceError
from edgerep.errors import BadInputError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "adb"
SERIAL = "R58M12ABCDE"

FAKE_ADB = r'''#!{python}
"""Fake adb: behaviour from config.json beside it; appends each call's argv to calls.jsonl."""
import json, sys
from pathlib import Path
here = Path(__file__).parent
cfg = json.loads((here / "config.json").read_text())
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
if args == ["devices"]:
    print("List of devices attached")
    for serial, state in cfg["devices"].items():
        print(f"{{serial}}\t{{state}}")
    sys.exit(0)
args = args[2:]  # drop -s SERIAL
if args[0] == "push":
    sys.exit(0)
command = args[1]
if command.startswith("test -x"):
    print("ok" if cfg["binary_exists"] else "")
    sys.exit(0)
if command.startswith("for c in"):
    for cpu, freq in enumerate(cfg["freqs"]):
        print(cpu, freq)
    sys.exit(0)
if "--graph=" in command:
    sys.stderr.write(Path(cfg["output"]).read_text())
    sys.exit(cfg["exit"])
sys.exit(0)
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """Install a fake adb on PATH; returns (configure(**cfg), calls())."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.delenv("EDGEREP_BENCHMARK_MODEL", raising=False)

    def configure(**cfg):
        base = {"devices": {SERIAL: "device"}, "binary_exists": True, "exit": 0,
                "freqs": [1785600, 1785600, 1785600, 1785600, 2419200, 2419200, 2419200, 2841600],
                "output": str(FIXTURES / "mobilenet_v1_riscv64_4threads_op_profiling.txt")}
        (bindir / "config.json").write_text(json.dumps({**base, **cfg}))

    def calls():
        path = bindir / "calls.jsonl"
        return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []

    configure()
    return configure, calls


@pytest.fixture
def tflite(tmp_path) -> Path:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"TFL3 placeholder: the fake device never reads it")
    return path


# --- parsing real outputs -------------------------------------------------------------------------------------

def test_parse_classic_output_with_op_profile():
    out = parse_benchmark_output((FIXTURES / "mobilenet_v1_riscv64_4threads_op_profiling.txt").read_text())
    assert out.complete
    assert (out.init_ms, out.first_ms, out.avg_ms) == pytest.approx((17.187, 3512.391, 2950.34))
    assert out.warmup_avg_ms == pytest.approx(3512.39)
    t = out.timing()
    assert t.count == 50 and (t.min_ms, t.max_ms, t.std_ms) == pytest.approx((2727.568, 3189.954, 109.798))
    assert t.median_ms is None and t.p90_ms is None  # the classic tool prints neither: not guessed
    assert len(out.ops) == 31  # the timed runs' table, not the init profile's AllocateTensors
    assert (out.ops[0].op, out.ops[0].avg_ms, out.ops[0].name) == ("CONV_2D", 60.957,
                                                                   "[MobilenetV1/MobilenetV1/Conv2d_0/Relu6]:0")
    assert out.ops[-1].op == "SOFTMAX"
    by_kind = {}
    for op in out.ops:
        by_kind[op.op] = by_kind.get(op.op, 0) + op.avg_ms
    assert by_kind["CONV_2D"] == pytest.approx(2651.853, abs=0.01)  # agrees with the tool's own summary table


def test_parse_litert_output_with_median_and_multiword_node_types():
    out = parse_benchmark_output((FIXTURES / "litert_fc_fp32_android_sme2_1thread.txt").read_text())
    t = out.timing()
    assert (out.init_ms, out.first_ms, out.warmup_avg_ms) == pytest.approx((4.478, 1.03, 0.47))
    assert t.count == 2112 and t.median_ms == pytest.approx(0.462) and t.mean_ms == pytest.approx(0.464545)
    assert [o.op for o in out.ops] == ["LiteRT::Run[buffer registration]", "AllocateTensors", "Static Reshape (NC)",
                                       "Fully Connected (NC, PF32) GEMM", "LiteRT::Run[Buffer sync]"]
    assert out.ops[3].avg_ms == pytest.approx(0.382) and out.ops[1].calls == 0


@pytest.mark.parametrize("name, avg, init, count", [
    ("espcn_android_4threads_head.txt", 33.2094, 0.855, 50),
    ("yolo_int8_raspberrypi_4threads_head.txt", 55.0432, 18.777, 50),
    ("mobilenet_v1_quant_android_2018.txt", 66.7676, 9.933, 15),
])
def test_parse_other_generations(name, avg, init, count):
    out = parse_benchmark_output((FIXTURES / name).read_text())
    assert out.avg_ms == pytest.approx(avg) and out.init_ms == pytest.approx(init)
    assert out.timing().count == count and out.ops == []


def test_parse_truncated_output_is_incomplete():
    text = (FIXTURES / "espcn_android_4threads_head.txt").read_text().split("Running benchmark for at least 50")[0]
    out = parse_benchmark_output(text)
    assert not out.complete and out.init_ms == pytest.approx(0.855) and out.timing().count == 0


# --- flags and core selection -----------------------------------------------------------------------------------

def test_flags():
    flags = benchmark_flags("/data/local/tmp/edgerep/m.tflite", BenchmarkOptions(threads=2, use_xnnpack=False,
                                                                                   num_runs=100, warmup_runs=5))
    assert flags == ["--graph=/data/local/tmp/edgerep/m.tflite", "--num_threads=2", "--use_xnnpack=false",
                     "--enable_op_profiling=true", "--num_runs=100", "--warmup_runs=5"]
    with pytest.raises(BadInputError):
        benchmark_flags("g", BenchmarkOptions(threads=0))


def test_big_core_mask():
    freqs = {0: 1785600, 1: 1785600, 2: 1785600, 3: 1785600, 4: 2419200, 5: 2419200, 6: 2419200, 7: 2841600}
    assert big_core_mask(freqs, 4) == "f0"  # prime core 7 + the three big cores
    assert big_core_mask(freqs, 1) == "80"
    assert big_core_mask({}, 4) == ""


# --- the device path through a fake adb ---------------------------------------------------------------------------

def test_run_pushes_pins_and_parses(fake_adb, tflite):
    _, calls = fake_adb
    r = run_over_adb(tflite, SERIAL, BenchmarkOptions(threads=4))
    assert not r.partial and r.device == f"adb:{SERIAL}"
    assert r.timing.mean_ms == pytest.approx(2950.34) and len(r.ops) == 31
    assert r.machine["affinity_mask"] == "f0"
    run = next(c for c in calls() if "--graph=" in c[-1])
    assert run[:3] == ["-s", SERIAL, "shell"]
    assert run[3].startswith("taskset f0 /data/local/tmp/benchmark_model --graph=/data/local/tmp/edgerep/model.tflite")
    assert "--num_threads=4" in run[3] and "--use_xnnpack=true" in run[3] and "--enable_op_profiling=true" in run[3]
    assert ["-s", SERIAL, "push", str(tflite), "/data/local/tmp/edgerep/model.tflite"] in calls()
    assert any(c[-1].startswith("rm -f /data/local/tmp/edgerep/model.tflite") for c in calls())  # cleaned up


def test_local_binary_is_pushed_and_cores_all_skips_taskset(fake_adb, tflite, tmp_path):
    _, calls = fake_adb
    local = tmp_path / "benchmark_model"
    local.write_bytes(b"\x7fELF")
    run_over_adb(tflite, SERIAL, BenchmarkOptions(binary=str(local), cores="all"))
    assert ["-s", SERIAL, "push", str(local), "/data/local/tmp/edgerep/benchmark_model"] in calls()
    run = next(c for c in calls() if "--graph=" in c[-1])
    assert run[3].startswith("/data/local/tmp/edgerep/benchmark_model --graph=")


def test_binary_path_from_environment(fake_adb, tflite, monkeypatch):
    _, calls = fake_adb
    monkeypatch.setenv("EDGEREP_BENCHMARK_MODEL", "/data/local/tmp/my_bm")
    run_over_adb(tflite, SERIAL, BenchmarkOptions(cores="3"))
    run = next(c for c in calls() if "--graph=" in c[-1])
    assert run[3].startswith("taskset 3 /data/local/tmp/my_bm --graph=")


def test_adb_missing(tflite, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BadInputError, match="adb is not installed"):
        run_over_adb(tflite, SERIAL)


@pytest.mark.parametrize("devices, message", [
    ({}, "is not connected \\(devices seen by adb: none\\)"),
    ({"OTHER123": "device"}, "not connected \\(devices seen by adb: OTHER123 \\(device\\)\\)"),
    ({SERIAL: "unauthorized"}, "unauthorized: unlock the phone and accept the USB debugging prompt"),
    ({SERIAL: "offline"}, "offline: reconnect"),
])
def test_device_state_errors(fake_adb, tflite, devices, message):
    configure, _ = fake_adb
    configure(devices=devices)
    with pytest.raises(DeviceError, match=message) as err:
        run_over_adb(tflite, SERIAL)
    assert "\n" not in str(err.value)


def test_benchmark_binary_missing(fake_adb, tflite):
    configure, _ = fake_adb
    configure(binary_exists=False)
    with pytest.raises(DeviceError, match="benchmark_model not found at /data/local/tmp/benchmark_model"):
        run_over_adb(tflite, SERIAL)


def test_benchmark_crash_keeps_partial_results(fake_adb, tflite):
    configure, calls = fake_adb
    configure(output=str(FIXTURES / "yolo_int8_raspberrypi_4threads_head.txt"), exit=139)
    with pytest.raises(DeviceError, match="crashed: segmentation fault") as err:
        run_over_adb(tflite, SERIAL)
    result = err.value.result
    assert result.partial and "averages kept" in result.error
    assert result.timing.mean_ms == pytest.approx(55.0432) and result.timing.count == 50
    assert result.to_dict()["partial"] is True
    assert any(c[-1].startswith("rm -f") for c in calls())  # the artifact is removed even after a crash


def test_benchmark_without_timings_fails(fake_adb, tflite, tmp_path):
    configure, _ = fake_adb
    early = tmp_path / "early.txt"  # the real output cut before its first timed run
    early.write_text((FIXTURES / "espcn_android_4threads_head.txt").read_text().split("Running benchmark")[0])
    configure(output=str(early), exit=1)
    with pytest.raises(DeviceError, match="benchmark_model failed \\(exit 1\\)") as err:
        run_over_adb(tflite, SERIAL)
    assert err.value.result.partial and err.value.result.timing.init_ms == pytest.approx(0.855)


def test_bad_arguments(fake_adb, tflite, tmp_path):
    with pytest.raises(BadInputError, match="benchmark_model runs .tflite"):
        onnx = tmp_path / "m.onnx"
        onnx.write_bytes(b"x")
        run_over_adb(onnx, SERIAL)
    with pytest.raises(BadInputError, match="does not exist"):
        run_over_adb(tmp_path / "missing.tflite", SERIAL)
    with pytest.raises(BadInputError, match="not big, all or a hex taskset mask"):
        run_over_adb(tflite, SERIAL, BenchmarkOptions(cores="fast"))


def test_run_on_device_dispatches_and_refuses_unknown(fake_adb, tflite):
    from edgerep.devices import is_real_device, run_on_device

    _, calls = fake_adb
    r = run_on_device(tflite, f"adb:{SERIAL}", threads=2)
    assert r.threads == 2 and r.machine["affinity_mask"] == "c0"  # the two fastest cores: 7 and 6
    assert "--num_threads=2" in next(c for c in calls() if "--graph=" in c[-1])[3]
    with pytest.raises(BadInputError, match="unknown device 'pixel9': use ssh://user@host\\[:port\\] or adb:SERIAL"):
        run_on_device(tflite, "pixel9")
    with pytest.raises(BadInputError, match="random inputs only"):
        run_on_device(tflite, f"adb:{SERIAL}", inputs=np.zeros((1, 3, 8, 8), np.float32))
    assert is_real_device("ssh://pi@h") and is_real_device("adb:x") and not is_real_device("pixel7")
