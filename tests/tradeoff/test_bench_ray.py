"""`edgerep bench --ray` on a real Ray cluster started here: `ray start` processes (a head and worker nodes), each
with its own custom resources, in a temporary folder, torn down by killing exactly their sessions.

The slow tests compare the cluster's rows with the single-process run's (2 shipped models x onnx, tflite x fp32,
int8) with one worker advertising the tests' local sshd as an ssh device, and kill a worker mid-run.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from conftest import one_error_line, run_cli, ssh_cli_args

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from ray_sweep import LocalCluster, model_specs, photos

PLAN = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("photos")
    return {"images": photos(d / "val", 1), "calib": photos(d / "calib", 2)}  # int8 needs >= 16 calibration photos


# --- no cluster needed ----------------------------------------------------------------------------------------


def test_without_ray_one_line_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code, _, err = run_cli(capsys, "bench", "--ray", "--device", "pixel4", "-o", str(tmp_path))
    assert code == 2 and 'pip install "edgerep[ray]"' in one_error_line(err)
    assert not list(tmp_path.glob("tradeoff.*"))


@pytest.mark.parametrize("address, message", [("127.0.0.1:{port}", "Ray cluster unreachable"),
                                              ("no-port-here", "give auto or the head's HOST:PORT")])
def test_bad_address_exits_2_fast(tmp_path, capsys, address, message):
    pytest.importorskip("ray")
    code, _, err = run_cli(capsys, "bench", "--ray", address.format(port=_free_port()), "--device", "pixel4",
                           "-o", str(tmp_path))
    assert code == 2 and message in one_error_line(err)
    assert not list(tmp_path.glob("tradeoff.*"))


def test_artifact_store_needs_ray(tmp_path, capsys):
    code, _, err = run_cli(capsys, "bench", "--artifact-store", str(tmp_path), "-o", str(tmp_path))
    assert code == 2 and "--artifact-store is for --ray" in one_error_line(err)


def test_example_cluster_file_is_valid_for_the_ray_launcher():
    pytest.importorskip("ray")
    yaml = pytest.importorskip("yaml")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples/ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a field the launcher does not know
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("--resources=" in c for c in config[key]), key


# --- one node whose workers cannot import onnxruntime -----------------------------------------------------------


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory):
    """A head only, whose task workers see an onnxruntime that fails to import: a node without the runtime."""
    pytest.importorskip("ray")
    blocker = tmp_path_factory.mktemp("blocker")
    (blocker / "onnxruntime.py").write_text("raise ImportError('No module named onnxruntime')\n")
    root = Path(__file__).resolve().parents[2]
    cluster = LocalCluster([], head_cpus=1, head_resources={"device:host:bare": 1},
                           env={"PYTHONPATH": f"{blocker}:{root}"})
    with cluster:
        yield cluster


def test_device_no_node_has_is_refused_before_work(bare_cluster, tmp_path, capsys):
    code, _, err = run_cli(capsys, "bench", "--ray", bare_cluster.address, "--device", "adb:R58M123",
                           "-o", str(tmp_path))
    line = one_error_line(err)
    assert code == 2 and "no node of the Ray cluster advertises 'device:adb:R58M123'" in line
    assert "device:host:bare" in line and "--resources" in line  # what exists, and how to add the device
    assert not list(tmp_path.glob("tradeoff.*"))


def test_worker_without_the_runtime_exits_2_with_the_reason(bare_cluster, data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "bench", "--ray", bare_cluster.address, "--target", "onnx", "--precision",
                           "fp32", "--device", "host", "--images", str(data["images"]), "-o", str(tmp_path))
    line = [x for x in err.splitlines() if x.startswith("error: ")]
    assert code == 2 and len(line) == 1, err
    assert "nothing could run on the Ray cluster: export failed on" in line[0]
    assert "onnxruntime" in line[0] and 'pip install "edgerep[onnx]"' in line[0]
    assert not list(tmp_path.glob("tradeoff.*"))


# --- head + two workers, one holding the ssh device -------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(sshd):
    pytest.importorskip("ray")
    workers = [{"num_cpus": 1, "resources": {"device:host:a": 1, f"device:{sshd['url']}": 1}},
               {"num_cpus": 1, "resources": {"device:host:b": 1}}]
    with LocalCluster(workers, head_cpus=1) as c:
        yield c


@pytest.mark.slow  # 8 exports in one process, then the same 8 on the cluster: minutes on 2 shared cores
def test_cluster_rows_equal_single_process_rows(cluster, sshd, data, tmp_path, capsys):
    from edgerep.tradeoff.run import run_bench

    single = run_bench(model_specs(), PLAN, ["host", "pixel4"], [1], output_dir=tmp_path / "single",
                       images=data["images"], calibration=data["calib"])
    out = tmp_path / "ray"
    code, stdout, err = run_cli(
        capsys, "bench", *model_specs(), "--target", "onnx,tflite", "--precision", "fp32,int8",
        "--device", f"host,{sshd['url']},pixel4", "--images", str(data["images"]), "--calib", str(data["calib"]),
        "-o", str(out), "--ray", cluster.address, "--json", *ssh_cli_args(sshd))
    assert code == 0, err
    rows = json.loads(stdout)
    assert sorted(p.name for p in out.glob("tradeoff.*")) == ["tradeoff.csv", "tradeoff.json", "tradeoff.md",
                                                             "tradeoff.png"]
    assert "queued" in err and "running" in err and "done" in err  # the per-node progress display
    _, a, b = cluster.node_ids
    assert len(rows) == 2 * len(PLAN) * 4  # devices: host -> host:a, host:b; the ssh board; pixel4
    ref = {(r.model, r.target, r.precision, r.device): r for r in single}
    for r in rows:
        key = (r["model"], r["target"], r["precision"])
        s = ref[(*key, "pixel4")]
        assert r["status"] == "ok" and r["latency_ms"] > 0, r
        assert (r["size_mb"], r["top1"], r["agreement"]) == (s.size_mb, s.top1, s.agreement), (r, s)
        where = {"host:a": a, "host:b": b, sshd["url"]: a}.get(r["device"])
        if where:  # measured on the node that holds the device
            assert r["latency_kind"] == "measured" and r["node"] == where, r
        else:  # the prediction is a pure function of the artifact: equal to the single run's
            assert r["latency_kind"] == "predicted" and r["latency_ms"] == pytest.approx(s.latency_ms, rel=1e-9)
    assert (out / "repghostnet_050" / "repghostnet_050-int8.tflite").is_file()  # artifacts came back


@pytest.mark.slow  # shares the three-node cluster with the tests around it
def test_ctrl_c_cancels_and_keeps_every_row(cluster, data, tmp_path):
    from edgerep.tradeoff.cluster import run_bench_ray

    def progress(msg: str) -> None:
        if "1 running" in msg:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver's loop

    run = run_bench_ray(model_specs(), PLAN[:2], ["host:a", "pixel4"], [1], address=cluster.address,
                        output_dir=tmp_path, images=data["images"], calibration=data["calib"], progress=progress)
    assert run.interrupted and len(run.rows) == 2 * 2 * 2
    assert all(r.status == "cancelled (interrupted)" and r.latency_ms is None for r in run.rows)


@pytest.mark.slow  # kills worker b: run last in this module
def test_worker_lost_mid_run_keeps_a_complete_report(cluster, data, tmp_path):
    from edgerep.tradeoff.cluster import run_bench_ray

    b = cluster.node_ids[2]
    killed = []

    def progress(msg: str) -> None:
        if not killed and _running_on(msg, b[:8]):
            cluster.kill_worker(1)
            killed.append(msg)

    store = tmp_path / "shared"  # artifacts through a folder every node sees, not the object store
    run = run_bench_ray(model_specs()[:1], PLAN[:2], ["host", "pixel4"], [1], address=cluster.address,
                        output_dir=tmp_path / "out", images=data["images"], calibration=data["calib"],
                        artifact_store=store, progress=progress)
    assert killed, "worker b never ran a task"
    assert sorted(p.name for p in (store / "repghostnet_050").glob("*.onnx")) == [
        "repghostnet_050-fp32.onnx", "repghostnet_050-int8.onnx"]
    assert not run.interrupted and len(run.rows) == 2 * 3  # every row is there
    lost = [r for r in run.rows if "lost" in r.status]
    assert lost, [r.status for r in run.rows]
    for r in lost:  # each names the node that was lost, and what became of the job
        assert f"lost on node {b[:8]}" in r.status or f"node {b[:8]} holding device:host:b was lost" in r.status, r
    for r in run.rows:
        if r.device == "host:b" and r.latency_ms is None:
            assert "lost" in r.status, r  # marked with the reason
        elif r.device != "host:b":
            assert r.latency_ms is not None and r.node != b, r  # retried elsewhere if it had been on b
    assert not [r for r in run.rows if r.status in ("not run", "cancelled (interrupted)")]


def _running_on(msg: str, node: str) -> bool:
    """True when the progress line shows at least one task running on ``node``."""
    for part in msg.split("|"):
        if node in part:
            running = part.split(" running")[0].rsplit(",", 1)[-1].strip()
            return running.isdigit() and int(running) > 0
    return False
