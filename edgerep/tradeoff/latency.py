"""One question, four answers: how fast is this artifact on DEVICE with N threads?

``host`` is measured here with the artifact's own runtime; ``ssh://user@host`` and ``adb:SERIAL`` are measured
on the real device; any other name is a device profile (``device_profiles/``) and the answer is *predicted*
from the artifact's graph. Every answer says which it is, so a table never mixes them silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..devices import is_real_device, run_on_device


@dataclass
class Latency:
    median_ms: float | None
    p90_ms: float | None
    kind: str  # "measured" | "predicted"
    device: str
    runtime: str
    threads: int
    notes: list[str] = field(default_factory=list)
    detail: dict = field(default_factory=dict)


def is_host(device: str) -> bool:
    """``host``, or ``host:NODE`` (the CPU of one Ray node, ``edgerep bench --ray``): measured where this runs."""
    return device == "host" or device.startswith("host:")


def latency(artifact: str | Path, device: str, threads: int = 1, precision: str | None = None,
            ssh=None) -> Latency:
    """Measure (host, ssh, adb) or predict (a device profile) the batch-1 latency of ``artifact``.

    ``ssh`` (``devices.ssh.SshOptions``) says how to reach an ``ssh://`` device (key, remote Python).
    ``precision`` is the export's label (``fp16``, ``w8``, ``palettize4``...); a prediction uses what the graph
    itself computes in instead (a TFLite fp16 file computes in fp32, a palettized Core ML program in fp16) and
    says so when the two differ.
    """
    path = Path(artifact)
    if is_host(device):
        from ..profile.host import profile_artifact

        prof = profile_artifact(path, threads=(threads,))
        t = prof.timings[0]
        return Latency(t.median_ms, t.p90_ms, "measured", device, prof.runtime, threads, prof.notes, prof.to_dict())
    if is_real_device(device):
        r = run_on_device(path, device, threads=threads, profile=False, ssh=ssh)
        return Latency(r.timing.median_ms, r.timing.p90_ms, "measured", r.device, r.runtime, r.threads,
                       [r.error] if r.error else [], r.to_dict())
    from ..profile import get_profile, graph_cost, predict

    cost = graph_cost(path)
    pred = predict(cost, get_profile(device), threads)
    notes = [pred.basis, *pred.notes]
    if precision and precision != pred.precision:
        notes.append(f"exported as {precision}; the graph computes in {pred.precision}")
    runtime = "roofline model (Core ML graph as CPU)" if cost.format == "coreml" else "roofline model"
    return Latency(pred.ms, None, "predicted", device, runtime, threads, notes, pred.to_dict())

