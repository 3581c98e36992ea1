"""Wall time of one `edgerep bench` sweep: sequential (one process) vs on a local Ray cluster (head + 2 workers).

    PYTHONPATH=$PWD python bench/ray_sweep.py                  # writes bench/results/ray_sweep.json

The sweep: the two shipped 32 px models x onnx, tflite x fp32, int8, timed on the host and predicted for pixel4,
on the shipped photos (2 per class). Variants alternate (sequential, cluster, sequential, ...), medians reported.
On one 2-core machine a cluster cannot beat the cores it has; what this measures is Ray's overhead and how much
of the sweep's wall time is spent waiting (process start, imports) that parallel tasks overlap.
``LocalCluster`` is also what tests/tradeoff/test_bench_ray.py starts: `ray start` processes, each in its own session,
with its own resources, stopped by killing exactly those sessions (never `ray stop`, which stops every Ray
on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("repghostnet_050", "repvgg_a0_narrow")
# Faster node-death detection than Ray's defaults (seconds instead of ~30 s), for the fault tests.
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "3000",
               "RAY_health_check_failure_threshold": "5"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Every live process of one session: a `ray start --block` and all it spawned (raylet, gcs, workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


class LocalCluster:
    """A head and worker nodes on this machine, each a `ray start --block` in its own session."""

    def __init__(self, workers: list[dict], head_cpus: int = 1, head_resources: dict | None = None,
                 env: dict | None = None, worker_env: list[dict] | None = None) -> None:
        self.workers, self.head_cpus, self.head_resources = workers, head_cpus, head_resources or {}
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "RAY_USAGE_STATS_ENABLED": "0", **FAST_HEALTH, **(env or {})}
        self.worker_env = worker_env or [{} for _ in workers]
        self.procs: list[subprocess.Popen] = []
        self.node_ids: list[str] = []  # head first, then workers in order
        self.dir = Path(tempfile.mkdtemp(prefix="erray-", dir="/tmp"))  # short: Ray's socket paths are limited
        self.address = ""

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, args: list[str], env: dict, log: str) -> None:
        out = open(self.dir / log, "w")
        self.procs.append(subprocess.Popen([shutil.which("ray") or "ray", "start", "--block", *args], env=env,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def start(self, timeout: float = 120) -> None:
        import ray

        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self._spawn(["--head", f"--port={port}", f"--temp-dir={self.dir}", "--include-dashboard=false",
                     f"--num-cpus={self.head_cpus}", f"--resources={json.dumps(self.head_resources)}",
                     "--disable-usage-stats"], self.env, "head.log")
        deadline = time.monotonic() + timeout
        self._wait(lambda: self._connect_ok(), deadline, "the head")
        ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        try:
            for i, (w, extra) in enumerate(zip(self.workers, self.worker_env)):  # one at a time: 2 cores
                self._spawn([f"--address={self.address}", f"--num-cpus={w.get('num_cpus', 1)}",
                             f"--resources={json.dumps(w.get('resources', {}))}", "--disable-usage-stats"],
                            {**self.env, **extra}, f"worker{i}.log")
                self._wait(lambda want=2 + i: sum(n["Alive"] for n in ray.nodes()) == want, deadline, f"worker {i}")
            nodes = [n for n in ray.nodes() if n["Alive"]]
            head = next(n for n in nodes if "node:__internal_head__" in n["Resources"])
            self.node_ids = [head["NodeID"]]
            for w in self.workers:
                mine = w.get("resources", {})
                self.node_ids.append(next(n["NodeID"] for n in nodes if n is not head and mine
                                          and all(k in n["Resources"] for k in mine)) if mine else "")
        finally:
            ray.shutdown()

    def _connect_ok(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", int(self.address.rsplit(":", 1)[1])), timeout=0.5).close()
            return True
        except OSError:
            return False

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                logs = "; ".join(f"{p.name}: {p.read_text()[-300:]}" for p in sorted(self.dir.glob("*.log")))
                raise RuntimeError(f"local Ray cluster: {what} did not come up ({logs})")
            time.sleep(0.3)

    def kill_worker(self, i: int) -> None:
        """Lose worker ``i`` as a machine is lost: SIGKILL its raylet, its task workers, everything it started."""
        for pid in _session_pids(self.procs[1 + i].pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs[1 + i].wait(timeout=30)

    def stop(self) -> None:
        """Stop only this cluster's processes (SIGTERM, then SIGKILL after a grace period) and remove its files."""
        sessions = [p.pid for p in self.procs]
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            for sid in sessions:
                for pid in _session_pids(sid):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace
            while any(_session_pids(s) for s in sessions) and time.monotonic() < deadline:
                time.sleep(0.2)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def photos(dest: Path, per_class: int) -> Path:
    """The first ``per_class`` shipped photos of each class, in class folders."""
    from edgerep import defaults

    for cls in sorted(p for p in defaults.default_images_dir().iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


def model_specs() -> list[str]:
    from edgerep import defaults

    folder = defaults.default_model_path().parent
    return [f"{m}={folder / f'{m}_cifar10.pt'}" for m in MODELS]


def cpu() -> dict:
    flags = set()
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"model": model, "cores": os.cpu_count(),
            "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni")},
            "load_avg_at_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="sequential/cluster pairs (default 1)")
    ap.add_argument("--targets", default="onnx,tflite")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--per-class", type=int, default=2, help="photos per class (default 2: 20 photos)")
    ap.add_argument("-o", "--output", default=str(ROOT / "bench/results/ray_sweep.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from edgerep.tradeoff.cluster import run_bench_ray
    from edgerep.tradeoff.run import run_bench

    plan = [(t, p) for t in args.targets.split(",") for p in args.precisions.split(",")]
    work = Path(tempfile.mkdtemp(prefix="ray-sweep-"))
    images = photos(work / "photos", args.per_class)
    calib = photos(work / "calib", 2)  # int8 needs >= 16 calibration photos
    wall: dict[str, list[float]] = {"sequential": [], "ray_local_cluster": []}
    rows_out: dict[str, list[dict]] = {}
    workers = [{"num_cpus": 1, "resources": {"device:host:a": 1}}, {"num_cpus": 1, "resources": {"device:host:b": 1}}]
    try:
        with LocalCluster(workers, head_cpus=1) as cluster:
            for r in range(args.rounds):
                t0 = time.perf_counter()
                rows = run_bench(model_specs(), plan, ["host", "pixel4"], [1], output_dir=work / f"seq{r}",
                                 images=images, calibration=calib)
                wall["sequential"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ray_rows = run_bench_ray(model_specs(), plan, ["host:a", "pixel4"], [1], address=cluster.address,
                                         output_dir=work / f"ray{r}", images=images, calibration=calib).rows
                wall["ray_local_cluster"].append(time.perf_counter() - t0)
                print(f"round {r}: sequential {wall['sequential'][-1]:.1f} s, "
                      f"cluster {wall['ray_local_cluster'][-1]:.1f} s", flush=True)
                rows_out = {"sequential": [_brief(x) for x in rows], "ray_local_cluster": [_brief(x) for x in ray_rows]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "PYTHONPATH=$PWD python bench/ray_sweep.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu(),
        "sweep": {"models": list(MODELS), "plan": plan, "devices_sequential": ["host", "pixel4"],
                  "devices_cluster": ["host:a", "pixel4"], "photos": 10 * args.per_class},
        "cluster": {"nodes": "head (1 CPU) + 2 workers (1 CPU each, device:host:a / device:host:b), one machine"},
        "wall_s": {k: {"runs": [round(v, 2) for v in vals], "median": round(statistics.median(vals), 2)}
                   for k, vals in wall.items()},
        "speedup_cluster_over_sequential": round(statistics.median(wall["sequential"])
                                                 / statistics.median(wall["ray_local_cluster"]), 3),
        "last_rows": rows_out,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_s", "speedup_cluster_over_sequential")}, indent=2))


def _brief(r) -> dict:
    return {"model": r.model, "target": r.target, "precision": r.precision, "device": r.device,
            "top1": r.top1, "agreement": r.agreement, "latency_ms": r.latency_ms, "status": r.status, "node": r.node}


if __name__ == "__main__":
    main()
