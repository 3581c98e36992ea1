"""``edgerep bench --ray``: the same sweep as ``run.run_bench``, fanned out over a Ray cluster.

Each (model, target, precision) export is one Ray task; each timing is one task placed on the node that holds
the device, which a node advertises as a custom resource (``ray start --resources``):

    host:NODE        -> device:host:NODE          the node's own CPU (the task also takes all of its CPUs)
    ssh://user@host  -> device:ssh://user@host     a board reached over ssh from that node
    adb:SERIAL       -> device:adb:SERIAL          a phone plugged into that node

A timing task takes the whole resource, so no two timings share a phone or a node's cores. ``host`` alone means
every node advertising a ``device:host:*`` resource; a device profile name (predicted) needs no resource.
Checkpoints and photos travel once through the object store; artifacts travel through it too, or through a
shared folder (``artifact_store``). Rows are built by ``run.make_row``, so the report is the single-machine one.

Faults: a task whose worker or node is lost is submitted once more (Ray places it on any node that still has
the resource); when no live node has it, or it is lost twice, its rows are kept and marked with the reason.
Ctrl-C cancels what is pending and returns the rows so far, the others marked ``cancelled``.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..devices import is_real_device
from ..errors import BadInputError, EdgerepError, require
from .blobs import pack, unpack
from .latency import Latency, is_host
from .run import (
    Exported,
    Progress,
    export_one,
    finish,
    make_row,
    measure,
    model_source,
    output_folder,
)
from .table import TradeoffRow

LOST_WAIT_S = 0.5  # how often the driver looks at finished tasks and at the nodes


def resource_of(device: str) -> str | None:
    """The custom resource a device's timing task takes; None for a predicted (profile) device."""
    if is_host(device) or is_real_device(device):
        return f"device:{device}"
    return None


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``auto``: the one this machine belongs to) or raise a one-line error."""
    require("ray", "ray")
    import ray

    if address != "auto":
        _probe(address)
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(
            f"--ray {address}: cannot join a Ray cluster ({first}); start one with `ray start --head` "
            "or give the head's HOST:PORT"
        ) from None


def _probe(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of retries) when nothing listens at HOST:PORT."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(f"--ray {address!r}: give auto or the head's HOST:PORT (e.g. --ray 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise BadInputError(
            f"--ray {address}: Ray cluster unreachable ({exc.strerror or exc}); is `ray start --head "
            f"--port={port}` running there, and the port open?"
        ) from None


@dataclass
class _Nodes:
    """The live nodes: which holds which device resource, and how many CPUs each has."""

    resources: dict[str, dict[str, float]]  # node id -> its total resources

    @classmethod
    def now(cls) -> _Nodes:
        import ray

        return cls({n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]})

    def holders(self, resource: str) -> list[str]:
        return [n for n, r in self.resources.items() if r.get(resource, 0) > 0]

    def label(self, node: str) -> str:
        held = sorted(k[len("device:"):] for k in self.resources.get(node, {}) if k.startswith("device:"))
        return f"{node[:8]}" + (f" [{', '.join(held)}]" if held else "")


def expand_devices(devices: list[str], nodes: _Nodes) -> list[str]:
    """``host`` -> every ``host:NODE`` the cluster advertises; any device no node has is refused, by name."""
    advertised = sorted({k for r in nodes.resources.values() for k in r if k.startswith("device:")})
    out: list[str] = []
    for d in devices:
        if d == "host":
            hosts = [k[len("device:"):] for k in advertised if k.startswith("device:host:")]
            if not hosts:
                raise BadInputError(_missing("device:host:NAME", advertised))
            out += hosts
        elif (res := resource_of(d)) is not None and not nodes.holders(res):
            raise BadInputError(_missing(res, advertised))
        else:
            out.append(d)
    return list(dict.fromkeys(out))


def _missing(resource: str, advertised: list[str]) -> str:
    have = ", ".join(advertised) or "none"
    return (f"no node of the Ray cluster advertises {resource!r} (device resources: {have}); start the node "
            f"holding the device with: ray start --address HEAD:PORT --resources '{{\"{resource}\": 1}}'")


# --- the two kinds of task (plain functions; wrapped with ray.remote at run time) ---------------------------


class _Tracker:
    """Which node each task started on: the progress display and the loss messages read it."""

    def __init__(self) -> None:
        self.started: dict[str, str] = {}

    def start(self, key: str, node: str) -> None:
        self.started[key] = node

    def snapshot(self) -> dict[str, str]:
        return dict(self.started)


def _started(tracker, key: str) -> str:
    import ray

    node = ray.get_runtime_context().get_node_id()
    tracker.start.remote(key, node)
    return node


def _export_task(tracker, key: str, model: tuple, target: str, precision: str, ckpt_blob: bytes, images_blob: bytes,
                 calib_blob: bytes | None, store: str | None,
                 overrides: dict | None = None) -> tuple[tuple[Exported, str], bytes | None]:
    """Export one (model, target, precision) on this node; the artifact comes back as bytes unless ``store``."""
    import torch

    torch.set_num_threads(1)
    node = _started(tracker, key)
    name, ckpt_name, note, fallback = model
    with tempfile.TemporaryDirectory(prefix="edgerep-ray-") as tmp:
        ckpt = unpack(ckpt_blob, Path(tmp) / "ckpt") / ckpt_name
        images = unpack(images_blob, Path(tmp) / "images")
        calib = unpack(calib_blob, Path(tmp) / "calib") if calib_blob is not None else None
        folder = (Path(store) if store else Path(tmp) / "out") / output_folder(name, ckpt)
        try:
            [e] = export_one(name, ckpt, note, [(target, precision)], output_dir=folder, images=images,
                             calibration=calib, say=lambda _m: None, overrides=overrides)
        except EdgerepError as exc:  # e.g. this worker lacks the converter: this row fails, the others go on
            e = Exported(fallback, target, precision, None, None, None, None, f"export failed on {node[:8]}: {exc}")
        blob = pack(folder) if e.artifact is not None and not store else None
    return (e, node), blob


def _time_task(tracker, key: str, artifact_blob: bytes | None, store_path: str | None, artifact: str, device: str,
               threads: int, precision: str, ssh) -> tuple[Latency | None, str, str]:
    """Time (or predict) one artifact on one device from the node holding it: (latency, failure, node)."""
    node = _started(tracker, key)
    with tempfile.TemporaryDirectory(prefix="edgerep-ray-") as tmp:
        folder = Path(store_path) if store_path else unpack(artifact_blob, tmp)
        lat, failure = measure(folder / artifact, device, threads, precision, ssh)
    return lat, failure.replace("latency failed:", f"latency failed on {node[:8]}:", 1), node


# --- the driver -------------------------------------------------------------------------------------------


@dataclass
class _Job:
    key: str
    slot: tuple  # where its rows go: (model index, plan index) or (model, plan, device, threads) index
    submit: object  # (attempt key) -> ObjectRef of the first return
    resource: str | None
    attempts: int = 1
    lost_on: list[str] = field(default_factory=list)

    @property
    def attempt_key(self) -> str:
        """What the task reports to the tracker: a retry is a new task, maybe on another node."""
        return f"{self.key} #{self.attempts}"


@dataclass
class RayRun:
    rows: list[TradeoffRow]
    interrupted: bool


def run_bench_ray(
    models: list[str],
    plan: list[tuple[str, str]],
    devices: list[str],
    threads: list[int],
    *,
    address: str,
    output_dir: str | Path,
    images: str | Path,
    calibration: str | Path | None = None,
    artifact_store: str | Path | None = None,
    progress: Progress | None = None,
    ssh=None,
    overrides: dict | None = None,
) -> RayRun:
    """Run the sweep on the cluster at ``address``; the rows are those ``run_bench`` makes, plus the node."""
    connect(address)
    import ray

    try:
        return _Driver(models, plan, devices, threads, Path(output_dir), images, calibration,
                       Path(artifact_store).resolve() if artifact_store else None, progress or (lambda _m: None),
                       ssh, overrides).run()
    finally:
        ray.shutdown()


class _Driver:
    def __init__(self, models, plan, devices, threads, out: Path, images, calibration, store, say, ssh,
                 overrides) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.plan, self.threads, self.out, self.store, self.say, self.ssh, self.overrides = (
            ray, plan, threads, out, store, say, ssh, overrides)
        self.nodes = _Nodes.now()
        self.devices = expand_devices(devices, self.nodes)  # refused here, before any work
        here = ray.get_runtime_context().get_node_id()
        self.tracker = ray.remote(num_cpus=0)(_Tracker).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        self.export_fn = ray.remote(_export_task)
        self.time_fn = ray.remote(_time_task)
        self.tmp = tempfile.TemporaryDirectory(prefix="edgerep-bench-")
        self.sources = [model_source(m, Path(self.tmp.name)) for m in models]  # bad names: before any work
        self.images = ray.put(pack(images))
        self.calib = ray.put(pack(calibration)) if calibration else None
        self.exported: dict[tuple, Exported] = {}
        self.done: dict[tuple, tuple[Latency | None, str, str]] = {}  # (m, p, d, t) -> latency, failure, node
        self.pending: dict[object, _Job] = {}
        self.failed_keys: set[str] = set()
        self.started: dict[str, str] = {}
        self._blob_of_key: dict[str, object] = {}  # export key -> ObjectRef of its artifact folder
        self._last = ""
        self.lost_nodes: set[str] = set()

    # jobs
    def _submit_exports(self) -> None:
        for m, (name, ckpt, note) in enumerate(self.sources):
            ckpt_blob = self.ray.put(pack(ckpt))
            model = (name, ckpt.name, note, name or ckpt.stem)
            for p, (target, precision) in enumerate(self.plan):
                key = f"export {model[3]} {target} {precision}"

                def submit(attempt, k=key, t=target, pr=precision, c=ckpt_blob, mo=model):
                    fn = self.export_fn.options(num_returns=2, max_retries=0, num_cpus=1)
                    first, blob = fn.remote(self.tracker, attempt, mo, t, pr, c, self.images, self.calib,
                                            str(self.store) if self.store else None, self.overrides)
                    self._blob_of_key[k] = blob
                    return first

                self._add(_Job(key, (m, p), submit, None))

    def _submit_timings(self, m: int, p: int, e: Exported) -> None:
        sub = output_folder(self.sources[m][0], self.sources[m][1])
        store_path = str(self.store / sub) if self.store else None
        blob = None if self.store else self._blob_of_key[self._export_key(m, p)]
        for d, device in enumerate(self.devices):
            res = resource_of(device)
            opts: dict = {"num_cpus": 0}
            holders = self.nodes.holders(res) if res else []
            if res and not holders:  # its node was lost before this artifact was ready: the rows say so
                for t, n in enumerate(self.threads):
                    self._fail(_Job(f"time {e.artifact} on {device} x{n}", (m, p, d, t), None, res),
                               self._lost_reason(res))
                continue
            if res:
                opts["resources"] = {res: max(self.nodes.resources[n][res] for n in holders)}  # the whole of it
                if is_host(device):  # and all the node's cores: no export runs beside a host timing
                    opts["num_cpus"] = max(self.nodes.resources[n].get("CPU", 0) for n in holders)
            for t, n in enumerate(self.threads):
                key = f"time {e.artifact} on {device} x{n}"

                def submit(attempt, dev=device, th=n, o=opts):
                    fn = self.time_fn.options(max_retries=0, **o)
                    return fn.remote(self.tracker, attempt, blob, store_path, e.artifact, dev, th, e.precision, self.ssh)

                self._add(_Job(key, (m, p, d, t), submit, res))

    def _export_key(self, m: int, p: int) -> str:
        name, ckpt, _ = self.sources[m]
        return f"export {name or ckpt.stem} {self.plan[p][0]} {self.plan[p][1]}"

    def _add(self, job: _Job) -> None:
        self.pending[job.submit(job.attempt_key)] = job

    # the loop
    def run(self) -> RayRun:
        interrupted = False
        try:
            self._submit_exports()
            self._show()
            while self.pending:
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=LOST_WAIT_S)
                for ref in ready:
                    self._collect(ref, self.pending.pop(ref))
                self._drop_unplaceable()
                self._show()
        except KeyboardInterrupt:
            interrupted = True
            for ref in self.pending:
                self.ray.cancel(ref, force=True)
            self.say(f"interrupted: {len(self.pending)} pending task(s) cancelled")
        finally:
            self.tmp.cleanup()
        return RayRun(self._rows("cancelled (interrupted)" if interrupted else "not run"), interrupted)

    def _collect(self, ref, job: _Job) -> None:
        from ray.exceptions import RayError, RayTaskError

        try:
            value = self.ray.get(ref)
        except RayTaskError as exc:  # a bug or an unexpected error inside the task: its rows say which
            self._fail(job, f"failed on {self.started.get(job.attempt_key, '?')[:8]}: {_one_line(exc)}")
            return
        except RayError as exc:  # the worker or its node was lost
            node = self._refresh_started().get(job.attempt_key, "")
            self.failed_keys.add(job.attempt_key)
            job.lost_on.append(node[:8] or "?")
            reason = f"worker lost on node {node[:8] or '?'} ({type(exc).__name__})"
            if job.attempts < 2 and (job.resource is None or _Nodes.now().holders(job.resource)):
                self.say(f"{job.key}: {reason}; retrying once")
                job.attempts += 1
                self._add(job)
            else:
                self._fail(job, reason + ("; retried once, lost again" if job.attempts > 1 else
                                          f"; no other node has {job.resource}"))
            return
        retried = f"retried after worker lost on node {job.lost_on[0]}" if job.lost_on else ""
        if len(job.slot) == 2:
            e, _node = value
            if retried:
                e.status = f"{e.status}; export {retried}"
            self.exported[job.slot] = e
            if e.artifact is not None:
                if not self.store:  # keep the artifacts in the output folder, as the single-machine run does
                    m = job.slot[0]
                    data = self.ray.get(self._blob_of_key[job.key])
                    unpack(data, self.out / output_folder(self.sources[m][0], self.sources[m][1]))
                    # owned and stored here from now on: losing the exporting node must not lose the artifact
                    self._blob_of_key[job.key] = self.ray.put(data)
                self._submit_timings(*job.slot, e)
        else:
            lat, failure, node = value
            if retried and not failure:
                failure = f"{self.exported[job.slot[:2]].status}; {retried}"
            self.done[job.slot] = (lat, failure, node)

    def _fail(self, job: _Job, reason: str) -> None:
        self.failed_keys.add(job.attempt_key)
        if len(job.slot) == 2:
            m, p = job.slot
            self.exported[job.slot] = self._placeholder(m, p, f"export {reason}")
        else:
            self.done[job.slot] = (None, f"latency {reason}", "")

    def _drop_unplaceable(self) -> None:
        """Pending tasks whose device is on no live node any more would wait forever: mark them instead."""
        nodes = _Nodes.now()
        self.lost_nodes.update(n for n in self.nodes.resources if n not in nodes.resources)
        self.nodes = nodes
        for ref, job in list(self.pending.items()):
            if job.resource and not nodes.holders(job.resource):
                self.ray.cancel(ref, force=True)
                del self.pending[ref]
                self._fail(job, self._lost_reason(job.resource))

    def _lost_reason(self, resource: str) -> str:
        lost = ", ".join(sorted(n[:8] for n in self.lost_nodes)) or "?"
        return f"not run: node {lost} holding {resource} was lost and no other node has it"

    def _refresh_started(self) -> dict[str, str]:
        from ray.exceptions import RayError

        try:
            self.started = self.ray.get(self.tracker.snapshot.remote(), timeout=10)
        except (RayError, TimeoutError):
            pass  # keep the last snapshot: the display is best effort, the rows are not
        return self.started

    def _show(self) -> None:
        """One line per change: per node, tasks queued / running / done / failed."""
        started = self._refresh_started()
        counts: dict[str, list[int]] = {}

        def bump(where: str, i: int) -> None:
            counts.setdefault(where, [0, 0, 0, 0])[i] += 1

        for job in self.pending.values():
            node = started.get(job.attempt_key)
            if node:
                bump(self.nodes.label(node), 1)
            else:
                holders = self.nodes.holders(job.resource) if job.resource else []
                bump(self.nodes.label(holders[0]) if len(holders) == 1 else "any node", 0)
        pending = {j.attempt_key for j in self.pending.values()}
        for key, node in started.items():
            if key not in pending:
                bump(self.nodes.label(node), 3 if key in self.failed_keys else 2)
        line = " | ".join(f"{w}: {q} queued, {r} running, {d} done, {f} failed"
                          for w, (q, r, d, f) in sorted(counts.items()))
        if line != self._last:
            self._last = line
            self.say(f"ray {line}")

    # rows, in the single-machine run's order
    def _placeholder(self, m: int, p: int, status: str) -> Exported:
        name, ckpt, _ = self.sources[m]
        return Exported(name or ckpt.stem, *self.plan[p], None, None, None, None, status)

    def _rows(self, unfinished: str) -> list[TradeoffRow]:
        rows = []
        for m in range(len(self.sources)):
            for p in range(len(self.plan)):
                e = self.exported.get((m, p)) or self._placeholder(m, p, unfinished)
                for d, device in enumerate(self.devices):
                    for t, n in enumerate(self.threads):
                        if e.artifact is None:
                            rows.append(make_row(e, device, n, None))
                            continue
                        lat, failure, node = self.done.get((m, p, d, t), (None, unfinished, ""))
                        rows.append(make_row(e, device, n, lat, failure, node=node))
        return finish(rows)


def _one_line(exc: Exception) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
