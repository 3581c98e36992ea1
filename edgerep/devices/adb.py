"""``--device adb:SERIAL``: time a .tflite on an Android phone with the user's own ``benchmark_model`` build.

TensorFlow Lite's ``benchmark_model`` is what published phone latencies are measured with, so edgerep runs it
rather than its own code: the artifact is pushed to ``/data/local/tmp/edgerep/``, the tool runs with
``--graph --num_threads --use_xnnpack --enable_op_profiling`` pinned to the fastest cores with ``taskset`` (the
"4 threads, big cores" setup papers quote), and its own summary is parsed: the ``Inference timings in us`` line,
the ``count=... min=... avg=... std=...`` statistics of the timed runs (``median`` when the build prints it),
and the operator-wise profile table. Where the binary lives is the user's choice: a path on the device, or a
local file that is pushed first (``--benchmark-binary`` or ``$EDGEREP_BENCHMARK_MODEL``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError
from .result import DeviceError, DeviceResult, OpTime, Timing

DEVICE_DIR = "/data/local/tmp/edgerep"
DEFAULT_BINARY = "/data/local/tmp/benchmark_model"
BINARY_ENV = "EDGEREP_BENCHMARK_MODEL"
_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


@dataclass
class BenchmarkOptions:
    """How ``benchmark_model`` runs. ``cores``: ``big`` (the ``threads`` fastest cores), ``all`` (no pinning) or
    a hexadecimal taskset mask such as ``f0``."""

    threads: int = 4
    use_xnnpack: bool = True
    cores: str = "big"
    op_profiling: bool = True
    num_runs: int | None = None
    warmup_runs: int | None = None
    binary: str | None = None
    timeout: float = 900


@dataclass
class BenchmarkOutput:
    """What one ``benchmark_model`` output says (times in ms). ``complete`` is False when it stopped before its
    inference summary (a crash, a refused model); the fields it did print are kept."""

    init_ms: float | None = None
    first_ms: float | None = None
    warmup_avg_ms: float | None = None
    avg_ms: float | None = None
    runs: dict = field(default_factory=dict)  # the timed runs' count= line: count, min, max, avg, std, median...
    ops: list[OpTime] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.avg_ms is not None

    def timing(self) -> Timing:
        r = self.runs
        ms = {k: r[k] / 1e3 for k in ("min", "max", "avg", "std", "median") if k in r}
        return Timing([], ms.get("median"), None, ms.get("avg", self.avg_ms), ms.get("std"), ms.get("min"),
                      ms.get("max"), self.first_ms, self.init_ms, int(r.get("count", 0)))


def benchmark_flags(graph: str, opts: BenchmarkOptions) -> list[str]:
    """The ``benchmark_model`` arguments for one run of ``graph`` (a path on the device)."""
    if opts.threads < 1:
        raise BadInputError(f"--threads must be >= 1, got {opts.threads}")
    flags = [f"--graph={graph}", f"--num_threads={opts.threads}", f"--use_xnnpack={str(opts.use_xnnpack).lower()}",
             f"--enable_op_profiling={str(opts.op_profiling).lower()}"]
    if opts.num_runs is not None:
        flags.append(f"--num_runs={opts.num_runs}")
    if opts.warmup_runs is not None:
        flags.append(f"--warmup_runs={opts.warmup_runs}")
    return flags


def big_core_mask(max_freq_khz: dict[int, int], threads: int) -> str:
    """Hex taskset mask of the ``threads`` cores with the highest maximum clock (prime and big cores first)."""
    if not max_freq_khz:
        return ""
    fastest = sorted(max_freq_khz, key=lambda cpu: (-max_freq_khz[cpu], -cpu))[:threads]
    return format(sum(1 << cpu for cpu in fastest), "x")


def parse_benchmark_output(text: str) -> BenchmarkOutput:
    """Parse the summary of any ``benchmark_model`` generation: the 2018 ``Average inference timings`` line, the
    TFLite ``Inference timings in us`` line, LiteRT's ``BENCHMARK RESULTS`` block, and the op profile table."""
    out = BenchmarkOutput()
    lines = [re.sub(r"^(?:INFO|VERBOSE|WARNING): (?:\[[^\]]*\] )?", "", ln.rstrip()) for ln in text.splitlines()]
    counts = [_pairs(ln) for ln in lines if re.match(r"\s*count=\d+", ln)]
    if len(counts) >= 2:  # warm-up runs first, then the timed runs
        out.runs = counts[-1]
    for ln in lines:
        m = re.search(r"[Ii]nference timings in us: (.*)", ln)
        if m:
            fields = dict(re.findall(rf"([A-Za-z][\w ()]*?): ({_NUMBER})", m.group(1)))
            _set_us(out, fields, {"Init": "init_ms", "First inference": "first_ms", "Warmup (avg)": "warmup_avg_ms",
                                  "Inference (avg)": "avg_ms", "Warmup": "warmup_avg_ms", "no stats": "avg_ms"})
        m = re.match(rf"\s*(Model initialization|Warmup \(first\)|Warmup \(avg\)|Inference \(avg\)):\s+({_NUMBER}) ms",
                     ln)
        if m:
            key = {"Model initialization": "init_ms", "Warmup (first)": "first_ms", "Warmup (avg)": "warmup_avg_ms",
                   "Inference (avg)": "avg_ms"}[m.group(1)]
            if getattr(out, key) is None:
                setattr(out, key, float(m.group(2)))
        m = re.match(rf"\s*Initialized session in ({_NUMBER}) ?ms", ln)
        if m and out.init_ms is None:
            out.init_ms = float(m.group(1))
        if re.match(r"\s*(ERROR|Error|Failed|Aborted|Segmentation fault)\b", ln):
            out.errors.append(ln.strip())
    if out.avg_ms is None and "avg" in out.runs:
        out.avg_ms = out.runs["avg"] / 1e3
    out.ops = _op_table(lines)
    return out


def run_over_adb(artifact: str | Path, serial: str, opts: BenchmarkOptions | None = None, *,
                 adb: str = "adb") -> DeviceResult:
    """Push ``artifact`` and run ``benchmark_model`` on device ``serial``; one-line ``DeviceError`` on failure
    (its ``result`` keeps whatever the tool printed before it stopped)."""
    opts = opts or BenchmarkOptions()
    path = Path(artifact)
    if not path.is_file():
        raise BadInputError(f"artifact {artifact} does not exist; check the path")
    if path.suffix != ".tflite":
        raise BadInputError(f"{path.name}: benchmark_model runs .tflite files; export with --target tflite")
    tool = shutil.which(adb)
    if tool is None:
        raise BadInputError(f"{adb} is not installed or not on PATH; install Android platform-tools"
                            " (apt-get install adb) and connect the phone with USB debugging on")
    device = AdbDevice(tool, serial)
    device.check_state()
    binary = device.install_binary(opts.binary or os.environ.get(BINARY_ENV) or DEFAULT_BINARY)
    graph = f"{DEVICE_DIR}/{path.name}"
    device.shell(f"mkdir -p {DEVICE_DIR}", "creating the work folder")
    device.call(["push", str(path), graph], "pushing the artifact", timeout=300)
    mask = _mask(device, opts)
    command = ([f"taskset {mask}"] if mask else []) + [shlex.quote(binary)] + [shlex.quote(f) for f in
                                                                              benchmark_flags(graph, opts)]
    try:
        proc = device.call(["shell", " ".join(command)], "running benchmark_model", timeout=opts.timeout, check=False)
    finally:
        device.call(["shell", f"rm -f {shlex.quote(graph)}"], "removing the artifact", check=False)
    parsed = parse_benchmark_output(proc.stdout + "\n" + proc.stderr)
    result = DeviceResult(f"adb:{serial}", str(path), "benchmark_model (TFLite/LiteRT, XNNPACK)" if opts.use_xnnpack
                          else "benchmark_model (TFLite/LiteRT)", opts.threads, parsed.timing(), parsed.ops,
                          {"serial": serial, "affinity_mask": mask or "all cores"}, command=command)
    if proc.returncode != 0 or not parsed.complete:
        result.partial = True
        result.error = _failure(proc, parsed, binary)
        raise DeviceError(f"adb:{serial}: {result.error}", result)
    return result


class AdbDevice:
    """One device through the adb client: state checks, shell calls with their exit status, file transfers."""

    def __init__(self, adb: str, serial: str) -> None:
        if not serial or any(c.isspace() for c in serial):
            raise BadInputError(f"adb serial {serial!r} is empty or has spaces; see `adb devices` for the serial")
        self.adb, self.serial = adb, serial

    def check_state(self) -> None:
        """Refuse a device that is absent, unauthorized or offline, with the fix for each."""
        try:
            proc = subprocess.run([self.adb, "devices"], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise DeviceError("`adb devices` did not answer within 60 s; run `adb kill-server` and retry") from None
        if proc.returncode != 0:
            raise DeviceError(f"`adb devices` failed: {_last(proc.stderr + proc.stdout)}; run `adb kill-server`"
                              " and retry")
        states = dict(ln.split()[:2] for ln in proc.stdout.splitlines()[1:] if len(ln.split()) >= 2)
        state = states.get(self.serial)
        if state == "device":
            return
        if state == "unauthorized":
            raise DeviceError(f"adb:{self.serial} is unauthorized: unlock the phone and accept the USB debugging"
                              " prompt (or revoke authorizations and reconnect)")
        if state == "offline":
            raise DeviceError(f"adb:{self.serial} is offline: reconnect the cable or run `adb kill-server`")
        if state is not None:
            raise DeviceError(f"adb:{self.serial} is in state {state!r}, not ready for commands")
        seen = ", ".join(f"{s} ({st})" for s, st in states.items()) or "none"
        raise DeviceError(f"adb:{self.serial} is not connected (devices seen by adb: {seen})")

    def install_binary(self, binary: str) -> str:
        """A local ``benchmark_model`` file is pushed; a device path must exist and be executable."""
        if Path(binary).is_file():
            target = f"{DEVICE_DIR}/benchmark_model"
            self.shell(f"mkdir -p {DEVICE_DIR}", "creating the work folder")
            self.call(["push", binary, target], "pushing benchmark_model", timeout=300)
            self.shell(f"chmod 755 {target}", "making benchmark_model executable")
            return target
        proc = self.call(["shell", f"test -x {shlex.quote(binary)} && echo ok"], "looking for benchmark_model",
                         check=False)
        if proc.stdout.strip() != "ok":
            raise DeviceError(f"adb:{self.serial}: benchmark_model not found at {binary} on the device; build it"
                              " (bazel build -c opt --config=android_arm64 //tensorflow/lite/tools/benchmark:"
                              f"benchmark_model) and pass it with --benchmark-binary or ${BINARY_ENV}")
        return binary

    def shell(self, command: str, what: str) -> str:
        return self.call(["shell", command], what).stdout

    def call(self, args: list[str], what: str, *, timeout: float = 120, check: bool = True):
        try:
            proc = subprocess.run([self.adb, "-s", self.serial, *args], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"adb:{self.serial}: {what} took longer than {timeout:.0f} s") from None
        if check and proc.returncode != 0:
            raise DeviceError(f"adb:{self.serial}: {what} failed: {_last(proc.stderr + proc.stdout)}")
        return proc


def _mask(device: AdbDevice, opts: BenchmarkOptions) -> str:
    if opts.cores == "all":
        return ""
    if opts.cores != "big":
        if not re.fullmatch(r"(0x)?[0-9a-fA-F]+", opts.cores) or int(opts.cores, 16) == 0:
            raise BadInputError(f"--cores {opts.cores!r} is not big, all or a hex taskset mask such as f0")
        return opts.cores.removeprefix("0x")
    listing = device.shell("for c in /sys/devices/system/cpu/cpu[0-9]*; do"
                           " echo ${c##*cpu} $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null); done",
                           "reading core clocks")
    freqs = {int(a): int(b) for a, b in (ln.split() for ln in listing.splitlines() if len(ln.split()) == 2)}
    return big_core_mask(freqs, opts.threads)


def _failure(proc: subprocess.CompletedProcess, parsed: BenchmarkOutput, binary: str) -> str:
    code = proc.returncode
    signals = {134: "aborted (SIGABRT)", 135: "bus error (SIGBUS)", 137: "killed (SIGKILL)",
               139: "segmentation fault (SIGSEGV)"}
    reason = parsed.errors[-1] if parsed.errors else _last(proc.stderr + proc.stdout)
    if code in signals:
        how = f"benchmark_model crashed: {signals[code]}"
    elif code != 0:
        how = f"benchmark_model failed (exit {code})"
    else:
        how = "benchmark_model printed no inference timings"
    kept = "averages kept" if parsed.complete else ("partial output kept" if parsed.runs or parsed.init_ms else "")
    return f"{how} running {binary}" + (f": {reason}" if reason else "") + (f" [{kept}]" if kept else "")


def _pairs(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(rf"(\w+)=({_NUMBER})", line)}


def _set_us(out: BenchmarkOutput, fields: dict[str, str], names: dict[str, str]) -> None:
    for label, value in fields.items():
        key = names.get(label.strip())
        if key:
            setattr(out, key, float(value) / 1e3)


def _op_table(lines: list[str]) -> list[OpTime]:
    """Rows of the timed runs' Run Order table (the init profile's table is skipped)."""
    start = next((i for i, ln in enumerate(lines) if "Operator-wise Profiling Info for Regular Benchmark Runs" in ln),
                 None)
    if start is None:
        if any("Profiling Info for Benchmark Initialization" in ln for ln in lines):
            return []  # only the init profile was printed
        start = 0  # LiteRT prints a single Run Order table without a section title
    header = next((i for i in range(start, len(lines)) if "Run Order" in lines[i]), None)
    if header is None or header + 1 >= len(lines):
        return []
    has_start = "[start]" in lines[header + 1]
    start_col = rf"{_NUMBER}\s+" if has_start else ""
    row = re.compile(rf"^\s*(?P<type>\S.*?)\s+{start_col}(?P<first>{_NUMBER})\s+(?P<avg>{_NUMBER})\s+{_NUMBER}%\s+"
                     rf"{_NUMBER}%\s+{_NUMBER}\s+(?P<calls>\d+)\s+(?P<name>\S.*)$")
    ops = []
    for ln in lines[header + 2 :]:
        if not ln.strip():
            break
        m = row.match(ln)
        if m:
            ops.append(OpTime(m["name"].strip(), m["type"].strip(), float(m["avg"]), int(m["calls"])))
    return ops


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
