"""What CPU a measurement ran on: model name, cores, clock, caches and the vector ISA flags that decide kernels.

Host timings mean nothing without this: onnxruntime and XNNPACK pick AVX2 / AVX-512 / VNNI kernels at run time,
and a VM may hide flags its physical CPU has (this machine's EPYC shows no AVX-512), so the flags are read
from /proc/cpuinfo, not guessed from the model name.
This module is a leaf (it imports nothing of edgerep): ``profiles.host_profile`` builds the host's profile from it.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

VECTOR_FLAGS = ("sse4_2", "avx", "fma", "avx2", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                "avx512_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")


@cache
def describe_cpu() -> dict:
    """Model, architecture, logical CPUs (all and usable by this process), clock, caches and vector flags."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    mhz = info.get("cpu MHz")
    return {
        "model": info.get("model name") or info.get("Hardware") or platform.processor() or "unknown",
        "arch": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mhz": float(mhz) if mhz else None,
        "caches": _caches(),
        "vector_flags": [f for f in VECTOR_FLAGS if f in flags],
        "hypervisor": "hypervisor" in flags,
    }


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in out:
            out[key.strip()] = value.strip()
    return out


def _caches() -> dict[str, float]:
    """Cache sizes of cpu0 in KiB from sysfs (``l1d_kb``, ``l2_kb``, ``l3_kb``); missing levels are left out."""
    out: dict[str, float] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        kb = float(size.rstrip("KMG")) * {"K": 1, "M": 1024, "G": 1024 * 1024}.get(size[-1], 1 / 1024)
        out[f"l{level}{'d' if level == '1' else ''}_kb"] = kb
    return out
