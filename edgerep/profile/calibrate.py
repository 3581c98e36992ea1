"""``edgerep calibrate``: time edgerep's kernel suite on a device, fit per-kernel regressors, write a device file.

The runtime is onnxruntime (the suite as ONNX files, ``kernel_suite.build_onnx``) or LiteRT (the suite as
.tflite files from litert-torch, ``kernel_suite_tflite.build_tflite``, cached across calibrations). The device is
``host`` (timed here, ``host.time_many``: the runners ``edgerep profile`` uses, one worker process per batch),
``ssh://user@host`` or ``adb:SERIAL`` (``devices.run_on_device``, the path of ``edgerep profile --device
ssh://...``). Timings are cached next to the output in ``<out>.partial.json``,
rewritten atomically after every batch: an interrupted calibration resumes where it stopped, and the device
file itself is written once, at the end, through a temporary file and a rename. The budget bounds the building
and timing time: suite models are timed round-robin over kernels, so a short budget still covers every kernel. Each
model's fastest time is kept (``host.time_many`` says why); the timings stay beside the device file in
``<out>.timings.json``.

Device file = the ``device_profiles/*.toml`` format (name, description, soc, clusters, memory, all sourced) plus
``[calibrated]`` (edgerep and runtime versions, what built the suite, the CPU measured, when) and the fitted
``[[fits]]`` / ``[[kernels]]`` tables (``kernel_table``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..devices import DEVICE_FORMS, is_real_device
from ..errors import BadInputError
from .cpu import describe_cpu
from .graph_cost import graph_cost
from .kernel_suite import KERNELS, LITERT_LEFT_OUT, SUITES, KernelSpec, build_onnx, sample_specs
from .kernel_table import KernelTable, fit_table, table_from_rows, table_to_rows

PRECISIONS = ("fp32", "int8")
PER_KERNEL = {"onnxruntime": 20, "litert": 4}
"""Default sampled shapes per kernel: one runtime at one thread count within ~15 minutes on one x86 core (LiteRT
builds each suite model with litert-torch first, the larger part of its time)."""
BATCH = {"onnxruntime": 8, "litert": 48}
"""Suite models built and timed per step (and kept in the partial cache after it): LiteRT's builder converts a
whole step's specs in one litert-torch call per precision."""
RUNTIME_OF = {"onnx": "onnxruntime", "tflite": "litert"}
"""The runtime whose kernel timings predict a file of each graph format."""
FORMAT = 2
"""Device-file layout version: a file with another one is refused (re-run ``edgerep calibrate``)."""


@dataclass
class Calibrated:
    """A device file read back: its profile fields and one kernel table per (precision, threads)."""

    name: str
    path: Path
    runtime: str
    runtime_version: str
    edgerep_version: str
    cpu: str
    tables: dict[tuple[str, int], KernelTable]

    def check_format(self, artifact: str, fmt: str) -> None:
        """Refuse (one line) to predict a ``fmt`` graph from another runtime's kernel timings."""
        want = RUNTIME_OF.get(fmt)
        if want is None:
            raise BadInputError(f"{self.path} holds {self.runtime} kernel timings, which say nothing about {fmt}; "
                                "predict a .mlpackage for a device profile (e.g. --device iphone12pro)")
        if want != self.runtime:
            raise BadInputError(f"{self.path} holds {self.runtime} kernel timings but {artifact} is a {fmt} file, "
                                f"run by {want}: calibrate with `edgerep calibrate ... --runtime {want}`")

    def table(self, precision: str, threads: int) -> KernelTable:
        if (precision, threads) not in self.tables:
            have = ", ".join(f"{p}@{t}" for p, t in sorted(self.tables)) or "none"
            raise BadInputError(f"{self.path}: not calibrated for {precision} at {threads} thread(s) (has {have}); "
                                f"run edgerep calibrate with --threads {threads}")
        return self.tables[(precision, threads)]


def calibrate(device: str, out: str | Path, *, runtime: str = "onnxruntime", threads: int = 1,
              budget_min: float = 14.0, per_kernel: int | None = None, kernels: tuple[str, ...] | None = None,
              progress: bool = True, ssh=None, adb=None) -> Path:
    """Time the suite on ``device``, fit, write the device file ``out``; returns its path."""
    out = Path(out)
    if runtime not in SUITES:
        raise BadInputError(f"--runtime {runtime}: use {' or '.join(SUITES)}")
    suite = SUITES[runtime]
    kernels = tuple(kernels or suite)
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise BadInputError(f"unknown suite kernel {unknown[0]!r}; use some of: {', '.join(suite)}")
    left_out = [k for k in kernels if k not in suite]
    if left_out:
        raise BadInputError(f"suite kernel {left_out[0]!r} is not in the {runtime} suite: "
                            f"{LITERT_LEFT_OUT[left_out[0]]}")
    per_kernel = PER_KERNEL[runtime] if per_kernel is None else per_kernel
    if per_kernel < 1:
        raise BadInputError(f"--per-kernel {per_kernel}: give 1 or more")
    if out.suffix != ".toml":
        raise BadInputError(f"{out}: a device file is TOML; give -o NAME.toml")
    if threads < 1:
        raise BadInputError(f"--threads {threads}: give 1 or more")
    if budget_min <= 0:
        raise BadInputError(f"--budget {budget_min}: give minutes > 0")
    if device != "host" and not is_real_device(device):
        raise BadInputError(f"unknown device {device!r}: use host, {DEVICE_FORMS}")
    if device.startswith("adb:"):
        raise BadInputError("calibrating over adb is not built yet: calibrate the phone through ssh (Termux, "
                            "ssh://user@phone) with --runtime litert or onnxruntime")
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path = out.with_name(out.name + ".partial.json")
    config = {"device": device, "runtime": runtime, "threads": threads, "per_kernel": per_kernel,
              "statistic": "fastest, thread-cpu at 1 thread", "kernels": list(kernels), "edgerep": __version__}
    cache = _load_cache(cache_path, config)
    specs = sample_specs(per_kernel, kernels=kernels)
    jobs = [(s, p) for s in specs for p in PRECISIONS]
    todo = [(s, p) for s, p in jobs if _key(s, p) not in cache["ms"]]
    tmp_dir = Path(tempfile.mkdtemp(prefix="edgerep-suite-"))
    bar = _progress(len(jobs), len(jobs) - len(todo), progress, device)
    deadline = time.monotonic() + budget_min * 60
    step = BATCH[runtime]
    try:
        for start in range(0, len(todo), step):
            if time.monotonic() > deadline:
                break
            batch = todo[start:start + step]
            files = _build(runtime, batch, tmp_dir)
            for (s, p), f in zip(batch, files.values()):
                _suite_cost(runtime, s, p, f)
            cache["ms"].update(_time(device, files, threads, ssh, adb))
            if "machine" not in cache:
                cache["machine"] = _machine(device, runtime, next(iter(files.values())), threads, ssh)
            _write_atomic(cache_path, json.dumps(cache))
            bar.update(len(batch))
    finally:
        bar.close()
        for f in tmp_dir.glob("*"):
            f.unlink()
        tmp_dir.rmdir()
    tables = []
    block = cache["machine"].get("nchwc_block", 0)
    for precision in PRECISIONS:
        samples = []
        for s in specs:
            ms = cache["ms"].get(_key(s, precision))
            if ms is not None:
                samples.append((_suite_cost(runtime, s, precision), ms))
        tables.append(fit_table(samples, precision, threads, block))
    _write_atomic(out, _device_toml(out.stem, device, runtime, cache["machine"], tables))
    os.replace(cache_path, out.with_name(out.name + ".timings.json"))  # kept: refits and diagnosis need them
    return out


def _key(spec: KernelSpec, precision: str) -> str:
    return f"{spec.id}_{precision}"


def _build(runtime: str, jobs: list[tuple[KernelSpec, str]], tmp_dir: Path) -> dict[str, Path]:
    """The suite files of ``jobs`` keyed like the timings: ONNX built into ``tmp_dir``, .tflite from (or into)
    the LiteRT suite cache."""
    if runtime == "litert":
        from ..console import captured
        from .kernel_suite_tflite import build_tflite

        with captured("building the LiteRT kernel suite with litert-torch"):  # its native logs, replayed on failure
            return {_key(s, p): path for (s, p), path in build_tflite(jobs).items()}
    return {_key(s, p): build_onnx(s, tmp_dir / f"{_key(s, p)}.onnx", p == "int8") for s, p in jobs}


_COSTS: dict[str, object] = {}


def _suite_cost(runtime: str, spec: KernelSpec, precision: str, built: Path | None = None):
    """The suite model's graph cost, from its file when just built, else rebuilt (the cache keeps timings)."""
    key = f"{runtime}:{_key(spec, precision)}"
    if key not in _COSTS:
        with tempfile.TemporaryDirectory(prefix="edgerep-suite-") as tmp:
            cost = graph_cost(built or next(iter(_build(runtime, [(spec, precision)], Path(tmp)).values())))
        cost.precision = precision  # ops the quantizer leaves in float still run inside an int8 graph
        _COSTS[key] = cost
    return _COSTS[key]


def _time(device: str, files: dict[str, Path], threads: int, ssh, adb) -> dict[str, float]:
    if device == "host":
        from .host import time_many

        fastest = time_many(list(files.values()), threads)
        return {k: fastest[p.name] for k, p in files.items()}
    from ..devices import run_on_device

    timings = {k: run_on_device(p, device, threads=threads, warmup=3, runs=15, profile=False, ssh=ssh,
                                adb=adb).timing for k, p in files.items()}
    return {k: t.min_ms if t.min_ms is not None else t.median_ms for k, t in timings.items()}


def _machine(device: str, runtime: str, sample: Path, threads: int, ssh) -> dict:
    """What was measured: the CPU and the runtime's version (from the device for ssh)."""
    if device == "host":
        from importlib.metadata import version

        from .ort_layout import probe_block

        cpu = describe_cpu()
        return {"cpu": cpu["model"], "flags": " ".join(cpu["vector_flags"]), "cores": len(cpu["usable_cpus"] or []),
                "mhz": cpu["mhz"] or 0.0,
                "runtime_version": version("onnxruntime" if runtime == "onnxruntime" else "ai-edge-litert"),
                "nchwc_block": probe_block() if runtime == "onnxruntime" else 0}  # LiteRT has no NCHWc layout
    from ..devices import run_on_device

    r = run_on_device(sample, device, threads=threads, warmup=1, runs=2, profile=False, ssh=ssh)
    m = r.machine or {}
    return {"cpu": str(m.get("cpu", "unknown")), "flags": "", "cores": int(m.get("cpu_count") or 1), "mhz": 0.0,
            "runtime_version": r.runtime}


def _suite_builder(runtime: str) -> str:
    """What wrote the suite files: litert-torch's lowering decides a .tflite suite's ops."""
    from importlib.metadata import version

    name = "litert-torch" if runtime == "litert" else "onnx"
    return f"{name} {version(name)}"


def _load_cache(path: Path, config: dict) -> dict:
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
            if cache.get("config") == config:
                return cache
        except (json.JSONDecodeError, OSError):
            pass
        path.unlink()  # another configuration (or a damaged file): start over rather than mix timings
    return {"config": config, "ms": {}}


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(f.name, 0o666 & ~umask)  # a temporary file is private; the result is an ordinary file
    os.replace(f.name, path)


def _progress(total: int, done: int, enabled: bool, device: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"calibrating {device}", unit="model", disable=not enabled,
                leave=False)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def _device_toml(name: str, device: str, runtime: str, machine: dict, tables: list[KernelTable]) -> str:
    cpu = machine["cpu"]
    lines = [
        f"# Written by `edgerep calibrate {device}`: kernel suite timed on the device, regressors fitted per kernel.",
        f"name = {_toml_value(name)}",
        f"description = {_toml_value(f'{device} calibrated with edgerep kernel suite ({runtime})')}",
        f"soc = {_toml_value(cpu)}",
        "", "[[clusters]]", f"core = {_toml_value(cpu)}", f"count = {max(1, int(machine['cores']))}",
        f"ghz = {max(0.1, float(machine['mhz']) / 1000):.3f}", "fp32_macs_per_cycle = 0.0", "int8_macs_per_cycle = 0.0",
        f"source = {_toml_value('measured by edgerep calibrate (per-kernel regressors below, not a roofline)')}",
        "estimate = true",
        "", "[memory]", "bandwidth_gbs = 0.0", "l1d_kb = 0", "l2_kb = 0", "l3_kb = 0",
        f"source = {_toml_value('not measured: the kernel regressors include memory traffic')}",
        "", "[calibrated]", f"format = {FORMAT}", f"edgerep_version = {_toml_value(__version__)}",
        f"device = {_toml_value(device)}", f"runtime = {_toml_value(runtime)}",
        f"runtime_version = {_toml_value(machine['runtime_version'])}",
        f"suite_builder = {_toml_value(_suite_builder(runtime))}", f"cpu = {_toml_value(cpu)}",
        f"cpu_flags = {_toml_value(machine['flags'])}", f"created = {_toml_value(time.strftime('%Y-%m-%d %H:%M:%S'))}",
    ]
    for t in tables:
        lines += ["", "[[fits]]", f"precision = {_toml_value(t.precision)}", f"threads = {t.threads}",
                  f"call_us = {t.call_us:.6g}", f"io_us_per_melem = {t.io_us_per_melem:.6g}", f"models = {t.models}",
                  f"nchwc_block = {t.nchwc_block}",
                  f"median_abs_error = {t.median_abs_error}"]
    for t in tables:
        for row in table_to_rows(t):
            lines += ["", "[[kernels]]"] + [f"{k} = {_toml_value(v)}" for k, v in row.items()]
    return "\n".join(lines) + "\n"


def is_device_file(spec: str) -> bool:
    """``--device`` names a calibrated device file (not a profile name, host, ssh:// or adb:)."""
    return spec.endswith(".toml")


def load_device_file(path: str | Path) -> Calibrated:
    """Read a calibrated device file; a missing, foreign-version or hand-broken file is a one-line BadInputError."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"device file {path} does not exist; write one with `edgerep calibrate host -o {path}`")
    try:
        d = tomllib.loads(path.read_text())
        cal = d["calibrated"]
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"device file {path} is not valid TOML ({exc}); re-run edgerep calibrate") from None
    except KeyError:
        raise BadInputError(f"device file {path} has no [calibrated] section: it is not written by edgerep "
                            "calibrate (profile names like pixel4 need no .toml)") from None
    if cal.get("format") != FORMAT or cal.get("edgerep_version") != __version__:
        raise BadInputError(f"device file {path} was written by edgerep {cal.get('edgerep_version', '?')} "
                            f"(format {cal.get('format', '?')}); this is edgerep {__version__} (format {FORMAT}): "
                            "re-run edgerep calibrate")
    try:
        tables = {}
        for fit in d["fits"]:
            t = table_from_rows(fit, d["kernels"])
            tables[(t.precision, t.threads)] = t
        return Calibrated(str(d["name"]), path, str(cal["runtime"]), str(cal["runtime_version"]),
                          str(cal["edgerep_version"]), str(cal["cpu"]), tables)
    except (KeyError, TypeError, ValueError) as exc:
        why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise BadInputError(f"device file {path} is invalid ({why}); re-run edgerep calibrate") from None
