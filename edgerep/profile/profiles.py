"""Device profiles as data: ``device_profiles/<name>.toml`` holds a device's CPU, memory and published latencies.

A profile file (see device_profiles/pixel4.toml for a full example):

    name, description, soc
    [[clusters]]      core, count, ghz, fp32_macs_per_cycle, int8_macs_per_cycle (per core), source,
                      estimate (true when a per-cycle figure is inferred, not published)
    [memory]          bandwidth_gbs, l1d_kb, l2_kb, l3_kb (0 = none), source
    [[calibration]]   model (a reference_models name), precision, threads, ms, setup, source
    [[published]]     other published figures kept for the record but not used to calibrate (with why)

``host`` is not a file: this machine is described at run time from /proc/cpuinfo (``host_profile``), because a
checked-in file would describe the machine it was written on, not the one running edgerep; and on the host
edgerep measures instead of predicting. The files ship in the wheel as package data ``edgerep._device_profiles``;
a checkout reads ``<repo>/device_profiles`` (the same lookup as ``edgerep.export.targets``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..errors import BadInputError
from ..resources import data_folder
from .cpu import describe_cpu
from .reference_models import reference_names

HOST = "host"


@dataclass(frozen=True)
class Cluster:
    core: str
    count: int
    ghz: float
    fp32_macs_per_cycle: float
    int8_macs_per_cycle: float
    source: str
    estimate: bool = False

    def macs_per_second(self, precision: str) -> float:
        per_cycle = self.int8_macs_per_cycle if precision == "int8" else self.fp32_macs_per_cycle
        return self.ghz * 1e9 * per_cycle


@dataclass(frozen=True)
class Calibration:
    """A published latency of a reference network on this device: what the predictor is fitted on."""

    model: str
    precision: str
    threads: int
    ms: float
    setup: str
    source: str


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    soc: str
    clusters: tuple[Cluster, ...]
    bandwidth_gbs: float
    caches_kb: dict[str, float]
    memory_source: str
    calibration: tuple[Calibration, ...] = ()
    published: tuple[dict, ...] = ()
    source: Path | None = field(default=None, compare=False)

    @property
    def cores(self) -> int:
        return sum(c.count for c in self.clusters)

    def used_cores(self, threads: int) -> list[Cluster]:
        """The ``threads`` fastest cores (big-core affinity, as published setups pin), one entry per core."""
        if not 1 <= threads <= self.cores:
            raise BadInputError(f"device {self.name} has {self.cores} cores; give --threads between 1 and {self.cores}")
        cores = [c for c in sorted(self.clusters, key=lambda c: -c.ghz * c.fp32_macs_per_cycle) for _ in range(c.count)]
        return cores[:threads]

    def peak_macs(self, threads: int, precision: str) -> float:
        """Peak MAC/s of the cores a ``threads``-thread run uses."""
        return sum(c.macs_per_second(precision) for c in self.used_cores(threads))

    def summary(self) -> str:
        return " + ".join(f"{c.count}x {c.core.split(' (')[0]} @ {c.ghz:g} GHz" for c in self.clusters)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "soc": self.soc,
            "clusters": [vars(c) for c in self.clusters], "bandwidth_gbs": self.bandwidth_gbs,
            "caches_kb": self.caches_kb, "memory_source": self.memory_source,
            "calibration": [vars(c) for c in self.calibration], "published": list(self.published),
            "peak_gmacs_fp32_all_cores": round(self.peak_macs(self.cores, "fp32") / 1e9, 1),
        }


def profile_names() -> list[str]:
    """Every shipped profile, sorted, then ``host``."""
    return sorted(p.stem for p in data_folder("device_profiles").glob("*.toml")) + [HOST]


def get_profile(name: str) -> Profile:
    """The profile ``name`` (``host``: this machine, described now); an unknown name lists the known ones."""
    if name == HOST:
        return host_profile()
    names = profile_names()
    if name not in names:
        raise BadInputError(f"unknown device {name!r}; use one of: {', '.join(names)}")
    return _load(name)


def host_profile() -> Profile:
    """This machine as a profile (for ``edgerep devices``); per-cycle throughputs are estimates from the ISA."""
    cpu = describe_cpu()
    flags = set(cpu["vector_flags"])
    # fp32 MACs/cycle/core: two FMA pipes of the widest vector unit (AVX-512: 16 lanes, AVX2: 8, NEON/SSE: 4)
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    int8 = lanes * (4 if flags & {"avx512_vnni", "avx_vnni", "asimddp"} else 2)
    ghz = (cpu["mhz"] or 0) / 1000 or 1.0
    caches = cpu["caches"]
    return Profile(
        name=HOST, description=f"this machine: {cpu['model']} ({cpu['arch']})", soc=cpu["model"],
        clusters=(Cluster(cpu["model"], len(cpu["usable_cpus"] or [0]), ghz, 2.0 * lanes, 2.0 * int8,
                          "/proc/cpuinfo (per-cycle throughput estimated from the vector flags)", estimate=True),),
        bandwidth_gbs=0.0, caches_kb={k: caches.get(k, 0.0) for k in ("l1d_kb", "l2_kb", "l3_kb")},
        memory_source="not measured: on the host edgerep measures latency instead of predicting it",
    )


def all_profiles() -> list[Profile]:
    return [get_profile(n) for n in profile_names() if n != HOST]


@cache
def _load(name: str) -> Profile:
    path = data_folder("device_profiles") / f"{name}.toml"
    try:
        return parse_profile(tomllib.loads(path.read_text()), path)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise BadInputError(f"device profile {path} is invalid ({why}); reinstall edgerep") from None


def parse_profile(d: dict, path: Path | None = None) -> Profile:
    """A Profile from a parsed TOML dict; a missing field, a source-less figure or an unknown model is a ValueError."""
    clusters = tuple(
        Cluster(c["core"], int(c["count"]), float(c["ghz"]), float(c["fp32_macs_per_cycle"]),
                float(c["int8_macs_per_cycle"]), _sourced(c, "cluster"), bool(c.get("estimate", False)))
        for c in d["clusters"]
    )
    mem = d["memory"]
    calibration = tuple(
        Calibration(c["model"], c["precision"], int(c["threads"]), float(c["ms"]), c.get("setup", ""),
                    _sourced(c, f"calibration {c['model']}"))
        for c in d.get("calibration", [])
    )
    known = set(reference_names())
    for c in calibration:
        if c.model not in known:
            raise ValueError(f"calibration model {c.model!r} is not a reference model ({', '.join(sorted(known))})")
        if c.precision not in ("fp32", "int8") or c.ms <= 0:
            raise ValueError(f"calibration {c.model}: precision must be fp32/int8 and ms > 0")
    published = tuple(d.get("published", []))
    for p in published:
        _sourced(p, "published figure")
    profile = Profile(
        name=d["name"], description=d["description"], soc=d["soc"], clusters=clusters,
        bandwidth_gbs=float(mem["bandwidth_gbs"]),
        caches_kb={k: float(mem[k]) for k in ("l1d_kb", "l2_kb", "l3_kb")}, memory_source=_sourced(mem, "memory"),
        calibration=calibration, published=published, source=path,
    )
    if path is not None and profile.name != path.stem:
        raise ValueError(f"name {profile.name!r} differs from the file name")
    if not clusters or any(c.count < 1 or c.ghz <= 0 for c in clusters):
        raise ValueError("clusters need count >= 1 and ghz > 0")
    return profile


def _sourced(d: dict, what: str) -> str:
    source = str(d.get("source", "")).strip()
    if not source:
        raise ValueError(f"{what} has no source")
    return source


