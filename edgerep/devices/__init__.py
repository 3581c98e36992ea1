"""Running artifacts on ARM: real devices over ssh or adb, and the ARM code path under qemu emulation.

``run_on_device`` is the one entry point for ``edgerep profile --device`` and ``edgerep bench``: it takes the
device spelled as on the command line (``ssh://user@host[:port]`` or ``adb:SERIAL``) and returns a
``result.DeviceResult`` (timings with their spread, per-op times, outputs). Nothing here prints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .result import DeviceResult

DEVICE_FORMS = "ssh://user@host[:port] or adb:SERIAL"


def is_real_device(spec: str) -> bool:
    """True for a device spelled ``ssh://...`` or ``adb:...`` (as opposed to a device profile name)."""
    return spec.startswith(("ssh://", "adb:"))


def run_on_device(
    artifact: str | Path,
    device: str,
    *,
    threads: int = 1,
    warmup: int = 3,
    runs: int = 20,
    profile: bool = True,
    inputs: np.ndarray | None = None,
    ssh=None,
    adb=None,
) -> DeviceResult:
    """Measure ``artifact`` on ``device``. ``ssh`` (``ssh.SshOptions``) and ``adb`` (``adb.BenchmarkOptions``)
    carry transport settings; for adb, ``threads`` and ``profile`` apply unless ``adb`` is given, and the
    tool's own run counts are used (``inputs`` cannot be run through benchmark_model)."""
    if device.startswith("ssh://"):
        from .ssh import run_over_ssh

        return run_over_ssh(artifact, device, threads=threads, warmup=warmup, runs=runs, profile=profile,
                            inputs=inputs, ssh=ssh)
    if device.startswith("adb:"):
        from .adb import BenchmarkOptions, run_over_adb

        if inputs is not None:
            raise BadInputError("benchmark_model times random inputs only; use an ssh:// device to run real images")
        return run_over_adb(artifact, device[len("adb:"):], adb or BenchmarkOptions(threads=threads,
                                                                                     op_profiling=profile))
    raise BadInputError(f"unknown device {device!r}: use {DEVICE_FORMS}")
