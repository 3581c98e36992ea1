"""The ARM code path without a device: run an artifact as an aarch64 process under qemu user-mode emulation.

ARM builds of onnxruntime and LiteRT/XNNPACK use other kernels than x86 ones (int8 especially: x86 multiplies
u8 x s8 pairs with saturating 16-bit sums, ARM uses dot-product instructions), so an artifact that validated on
this host can still compute something else on a phone. This module runs the same ``remote_runner.py`` on the
same inputs twice, natively and as an aarch64 process, and compares the outputs. Emulated wall time says
nothing about phone latency.

The aarch64 root is light and needs neither root nor binfmt_misc: the distribution's arm64 ``python3`` and
``libstdc++6`` packages (with their dependencies, resolved by apt in a private state directory, never touching
the host's apt configuration) are unpacked with ``dpkg -x``; the aarch64 wheels of numpy, onnxruntime and
ai-edge-litert (pinned to the host's versions, so both sides run the same release) are installed with the host's
pip into a separate folder; ``qemu-aarch64-static -L ROOT`` runs ``ROOT/usr/bin/python3``. It is built once into
``~/.cache/edgerep/aarch64`` (``$EDGEREP_CACHE`` or ``$XDG_CACHE_HOME`` move it), in a temporary folder renamed
when complete, so an interrupted setup never leaves a half-built root behind.

Pitfall handled here: with ``-L`` the emulated process reads the host's ``/sys``, and cpuinfo (inside
onnxruntime) crashes parsing the x86 CPU topology; empty ``ROOT/sys/devices/system/cpu/{possible,present}``
files shadow the host's, and cpuinfo falls back to its defaults (it prints "Error in cpuinfo" and runs on).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..resources import cache_dir
from .result import DeviceError, check_runner_result

RUNNER = Path(__file__).with_name("remote_runner.py")
ROOT_VERSION = 1  # bump when the layout or contents of the cached root change: older roots are rebuilt
PACKAGES = ("python3", "libstdc++6")
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert")
# pip matches platform tags exactly; without manylinux_2_27 it silently picks ai-edge-litert 1.x
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")
# arm64 package archives per host distribution: (mirror, suites, keyring)
ARCHIVES = {
    "debian": ("http://deb.debian.org/debian", ("{c}", "{c}-updates"),
               "/usr/share/keyrings/debian-archive-keyring.gpg"),
    "ubuntu": ("http://ports.ubuntu.com/ubuntu-ports", ("{c}", "{c}-updates", "{c}-security"),
               "/usr/share/keyrings/ubuntu-archive-keyring.gpg"),
}
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EmulatedPython:
    """An aarch64 Python that runs under qemu: ``command()`` is the argv prefix that starts it."""

    root: Path
    qemu: str | None  # None on an aarch64 host: the native interpreter runs as it is
    python: str
    site: Path | None
    info: dict = field(default_factory=dict)

    def command(self) -> list[str]:
        if self.qemu is None:
            return [self.python]
        return [self.qemu, "-L", str(self.root / "sysroot"), self.python]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        if self.site is not None:
            env["PYTHONPATH"] = str(self.site)
        env["PYTHONNOUSERSITE"] = "1"
        return env


@dataclass
class ArchComparison:
    """The same artifact on the same inputs, on this host and as an aarch64 process."""

    artifact: str
    inputs: str
    n_inputs: int
    host: dict
    arm: dict
    max_abs: float
    rel: float
    top1_agreement: float | None
    arm_seconds: float
    setup_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def emulation_problem() -> str | None:
    """Why aarch64 emulation cannot work on this host (None when it can); checked before any download."""
    if platform.machine() in ("aarch64", "arm64"):
        return None
    if platform.machine() != "x86_64":
        return f"aarch64 emulation is set up for x86_64 hosts, this one is {platform.machine()}"
    if _qemu() is None:
        return "qemu-aarch64-static is not installed; install it with: apt-get install qemu-user-static"
    missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
    if missing or _distribution() is None:
        return ("the arm64 Python is fetched with apt-get/dpkg from Debian or Ubuntu archives; this host has "
                f"{'no ' + ', '.join(missing) if missing else 'another distribution'}")
    return None


def aarch64_python(cache: Path | None = None, progress: Progress | None = None) -> EmulatedPython:
    """The cached aarch64 Python with numpy, onnxruntime and ai-edge-litert, built on first use."""
    say = progress or (lambda _msg: None)
    if platform.machine() in ("aarch64", "arm64"):
        return EmulatedPython(Path(sys.prefix), None, sys.executable, None, {"native": True})
    problem = emulation_problem()
    if problem:
        raise BadInputError(f"cannot emulate aarch64: {problem}")
    root = (cache or cache_dir()) / "aarch64"
    cached = _cached(root)
    if cached:
        return cached
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aarch64.partial-", dir=root.parent))
    try:
        _build(work, say)
        if root.exists() and not _cached(root):  # an outdated root (older ROOT_VERSION): replaced as a whole
            shutil.rmtree(root)
        try:
            os.replace(work, root)
        except OSError:  # another process finished its build first: use that one
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    built = _cached(root)
    if built is None:
        raise BadInputError(f"cannot emulate aarch64: the root in {root} is incomplete; delete it and retry")
    return built


def _cached(root: Path) -> EmulatedPython | None:
    """The root in ``root`` if it is complete and of the current layout."""
    stamp = root / "ready.json"
    if not stamp.is_file():
        return None
    info = json.loads(stamp.read_text())
    if info.get("root_version") != ROOT_VERSION:
        return None
    return EmulatedPython(root, _qemu(), str(root / info["python"]), root / "site", info)


def _build(work: Path, say: Progress) -> None:
    started = time.perf_counter()
    distro, codename = _distribution()
    sysroot, site, apt = work / "sysroot", work / "site", work / "apt"
    say(f"aarch64 root: resolving arm64 {' + '.join(PACKAGES)} from the {distro} {codename} archive (once)")
    debs = _download_debs(apt, distro, codename)
    say(f"aarch64 root: unpacking {len(debs)} packages")
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(sysroot)], "unpacking " + deb.name)
    shutil.rmtree(apt)
    cpu = sysroot / "sys/devices/system/cpu"  # see the module docstring: shadows the host's x86 topology
    cpu.mkdir(parents=True)
    (cpu / "possible").write_text("")
    (cpu / "present").write_text("")
    pythons = sorted(p for p in (sysroot / "usr/bin").glob("python3.*") if p.name[8:].isdigit())
    if not pythons:
        raise BadInputError(f"cannot emulate aarch64: the {distro} {codename} python3 package has no python3.X binary")
    python = pythons[-1]
    version = python.name.removeprefix("python")
    pins = [f"{name}=={_host_version(name)}" if _host_version(name) else name for name in WHEELS]
    say(f"aarch64 root: downloading aarch64 wheels for Python {version}: {', '.join(pins)}")
    platform_args = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts",
          "--target", str(site), "--only-binary=:all:", "--implementation", "cp", "--python-version", version,
          *platform_args, *pins], "pip could not fetch the aarch64 wheels")
    info = {"root_version": ROOT_VERSION, "distribution": f"{distro} {codename}",
            "python": str(python.relative_to(work)), "python_version": version, "wheels": pins, "packages": len(debs),
            "setup_seconds": round(time.perf_counter() - started, 1)}
    (work / "ready.json").write_text(json.dumps(info, indent=2) + "\n")  # written last: marks the root complete


def _download_debs(apt: Path, distro: str, codename: str) -> list[Path]:
    """The arm64 packages and their dependency closure, resolved by apt against an empty private dpkg status."""
    mirror, suites, keyring = ARCHIVES[distro]
    mirror = os.environ.get("EDGEREP_ARM64_MIRROR", mirror)
    lines = [f"deb [arch=arm64 signed-by={keyring}] {mirror} {s.format(c=codename)} main" for s in suites]
    if distro == "debian":
        lines.append(f"deb [arch=arm64 signed-by={keyring}] {DEBIAN_SECURITY} {codename}-security main")
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True)
    (apt / "state/status").write_text("")
    (apt / "sources.list").write_text("\n".join(lines) + "\n")
    opts = [
        "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
        "-o", f"Dir::State={apt / 'state'}", "-o", f"Dir::State::status={apt / 'state/status'}",
        "-o", f"Dir::Cache={apt / 'cache'}", "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null", "-o", "Dir::Etc::Preferences=/dev/null",
        "-o", "Dir::Etc::PreferencesParts=/dev/null", "-o", "Debug::NoLocking=1", "-q",
    ]
    _run(["apt-get", *opts, "update"], f"apt-get update of the arm64 {distro} {codename} package lists failed")
    _run(["apt-get", *opts, "install", "-y", "--download-only", "--no-install-recommends", *PACKAGES],
         "apt-get could not download the arm64 packages")
    debs = sorted((apt / "cache/archives").glob("*.deb"))
    if not debs:
        raise BadInputError("cannot emulate aarch64: apt-get downloaded no arm64 packages")
    return debs


def run_artifact(python: EmulatedPython, artifact: Path, inputs: np.ndarray, *, threads: int = 1,
                 timeout: float = 1800) -> tuple[dict, np.ndarray]:
    """Run ``artifact`` on NCHW float32 ``inputs`` with ``python`` (the runner's JSON and the outputs)."""
    with tempfile.TemporaryDirectory(prefix="edgerep-emu-") as tmp:
        x, y = Path(tmp) / "inputs.npy", Path(tmp) / "outputs.npy"
        np.save(x, np.ascontiguousarray(inputs, dtype=np.float32))
        cmd = [*python.command(), str(RUNNER), str(artifact), "--inputs", str(x), "--outputs", str(y),
               "--threads", str(threads), "--runs", "0"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=python.env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BadInputError(f"{artifact.name}: the aarch64 run took longer than {timeout:.0f} s") from None
        result = check_runner_result(proc.stdout, proc.stderr, proc.returncode, f"aarch64 ({python.python})")
        return result, np.load(y)


def compare_with_host(artifact: str | os.PathLike, inputs: np.ndarray, description: str, *,
                      cache: Path | None = None, progress: Progress | None = None) -> ArchComparison:
    """Run ``artifact`` on this host and as an aarch64 process on the same inputs; compare the outputs."""
    import torch

    from ..proof.numerics import closeness, output_error

    path = Path(artifact).resolve()
    if not path.is_file():
        raise BadInputError(f"artifact {artifact} does not exist; check the path")
    if path.suffix not in (".onnx", ".tflite"):
        raise BadInputError(f"{path.name}: only .onnx and .tflite artifacts run on aarch64 (Core ML needs Apple)")
    say = progress or (lambda _msg: None)
    host_python = EmulatedPython(Path(sys.prefix), None, sys.executable, None, {"native": True})
    say(f"running {path.name} on {len(inputs)} inputs on this host ({platform.machine()})")
    try:  # first: a file that does not even run here is refused before any download
        host, y_host = run_artifact(host_python, path, inputs)
    except DeviceError as exc:
        raise BadInputError(f"{path.name} does not run on this host: {exc}") from None
    t0 = time.perf_counter()
    arm_python = aarch64_python(cache, say)
    setup = time.perf_counter() - t0
    say(f"running {path.name} on {len(inputs)} inputs as an aarch64 process (emulated, slow)")
    t0 = time.perf_counter()
    arm, y_arm = run_artifact(arm_python, path, inputs)
    arm_seconds = time.perf_counter() - t0
    arm["emulated"] = arm_python.qemu is not None
    err = output_error(torch.from_numpy(y_host), torch.from_numpy(y_arm))
    agree = closeness(y_host, y_arm).top1 if y_host.ndim == 2 else None  # not a classifier
    return ArchComparison(str(path), description, len(inputs), host, arm, err.max_abs, err.rel, agree,
                          arm_seconds, setup)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise BadInputError(f"cannot emulate aarch64: {what} ({reason})")


def _qemu() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def _distribution() -> tuple[str, str] | None:
    """(debian|ubuntu, codename) of this host, from /etc/os-release; None for other distributions."""
    try:
        fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    except OSError:
        return None
    fields = {k: v.strip().strip('"') for k, v in fields.items()}
    ids = {fields.get("ID", "")} | set(fields.get("ID_LIKE", "").split())
    distro = "ubuntu" if "ubuntu" in ids else "debian" if "debian" in ids else None
    codename = fields.get("VERSION_CODENAME") or fields.get("UBUNTU_CODENAME")
    return (distro, codename) if distro and codename else None


def _host_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
