"""``--device ssh://user@host[:port]``: time an artifact on a remote machine (a Raspberry Pi, an ARM board, a server).

The artifact and ``remote_runner.py`` are copied with the system OpenSSH ``scp`` into a fresh temporary folder on
the device, run with the device's Python (which needs numpy and onnxruntime or ai-edge-litert, nothing of
edgerep), and the folder is removed afterwards. ssh runs non-interactively (``BatchMode=yes``: a missing key
fails at once instead of prompting) with a connect timeout; host keys are trusted on first use
(``StrictHostKeyChecking=accept-new``) and checked afterwards.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .result import DeviceError, DeviceResult, OpTime, Timing, check_runner_result

RUNNER = Path(__file__).with_name("remote_runner.py")
_URL = re.compile(r"^ssh://(?:(?P<user>[^@/:]+)@)?(?P<host>\[[0-9a-fA-F:.]+\]|[^@/:\[\]]+)(?::(?P<port>\d+))?/?$")


@dataclass(frozen=True)
class SshDevice:
    host: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return f"ssh://{self.destination}" + (f":{self.port}" if self.port else "")


def parse_ssh_url(url: str) -> SshDevice:
    """``ssh://user@host[:port]`` -> SshDevice; anything else is a one-line error with the expected form."""
    m = _URL.match(url.strip())
    if not m:
        raise BadInputError(f"device {url!r} is not ssh://[user@]host[:port] (e.g. ssh://pi@192.168.1.20:22)")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise BadInputError(f"device {url!r}: port {port} is not in 1..65535")
    return SshDevice(m["host"].strip("[]"), m["user"], port)


@dataclass
class SshOptions:
    """How to reach the device: key, timeouts, remote Python, and extra ``-o`` options (e.g. a known_hosts file)."""

    identity: str | None = None
    python: str = "python3"
    connect_timeout: int = 10
    run_timeout: float = 600
    options: tuple[str, ...] = ()


def run_over_ssh(
    artifact: str | Path,
    device: str | SshDevice,
    *,
    threads: int = 1,
    warmup: int = 3,
    runs: int = 20,
    profile: bool = False,
    inputs: np.ndarray | None = None,
    ssh: SshOptions | None = None,
) -> DeviceResult:
    """Copy ``artifact`` to the device, time it there (and run ``inputs`` if given), bring back the results.

    Raises ``DeviceError`` (one line) when the host is unreachable, the key is refused, the remote Python or
    runtime is missing, or the runtime cannot load the artifact; its ``result`` keeps what was measured.
    """
    dev = parse_ssh_url(device) if isinstance(device, str) else device
    opts = ssh or SshOptions()
    path = Path(artifact)
    if not path.is_file():
        raise BadInputError(f"artifact {artifact} does not exist; check the path")
    if path.suffix not in (".onnx", ".tflite"):
        raise BadInputError(f"{path.name}: the ssh runner runs .onnx and .tflite files only")
    with tempfile.TemporaryDirectory(prefix="edgerep-ssh-") as tmp:
        session = _Session(dev, opts, Path(tmp))
        try:
            return _run_in(session, path, Path(tmp), threads, warmup, runs, profile, inputs)
        finally:
            session.close()


def _run_in(session: "_Session", path: Path, tmp: Path, threads: int, warmup: int, runs: int, profile: bool,
            inputs: np.ndarray | None) -> DeviceResult:
    dev, opts = session.dev, session.opts
    remote = session.check("mktemp -d /tmp/edgerep.XXXXXX", "creating a work folder").strip()
    try:
        files = [path, RUNNER]
        if inputs is not None:
            np.save(tmp / "inputs.npy", np.ascontiguousarray(inputs, dtype=np.float32))
            files.append(tmp / "inputs.npy")
        session.copy([str(f) for f in files], f"{dev.destination}:{remote}/", "copying the artifact")
        cmd = [opts.python, f"{remote}/{RUNNER.name}", f"{remote}/{path.name}", "--threads", str(threads),
               "--warmup", str(warmup), "--runs", str(runs)]
        if inputs is not None:
            cmd += ["--inputs", f"{remote}/inputs.npy", "--outputs", f"{remote}/outputs.npy"]
        if profile:
            cmd.append("--profile")
        proc = session.run(shlex.join(cmd), opts.run_timeout)
        where = f"{dev} ({opts.python})"
        if proc.returncode == 255:
            raise DeviceError(f"{where}: {_ssh_reason(proc.stderr)}")
        if proc.returncode == 127 or (proc.returncode != 0 and not proc.stdout.strip()):
            raise DeviceError(f"{where}: cannot run the remote Python {opts.python!r} ({_last(proc.stderr)});"
                              " pass the device's python3 with --remote-python")
        try:
            data = check_runner_result(proc.stdout, proc.stderr, proc.returncode, where)
        except DeviceError as exc:
            exc.result = _result(dev, path, threads, exc.result or {}, None, partial=True, error=str(exc))
            raise
        outputs = None
        if inputs is not None:
            session.copy([f"{dev.destination}:{remote}/outputs.npy"], str(tmp), "fetching the outputs")
            outputs = np.load(tmp / "outputs.npy")
        return _result(dev, path, threads, data, outputs)
    finally:
        session.run(f"rm -rf {shlex.quote(remote)}", 60)


def _result(dev: SshDevice, path: Path, threads: int, data: dict, outputs, *, partial: bool = False,
            error: str | None = None) -> DeviceResult:
    runtime = f"{data.get('runtime', '?')} {data.get('runtime_version', '')}".strip()
    return DeviceResult(
        str(dev), str(path), runtime, threads, Timing.from_runs(data.get("runs_ms", []), data.get("first_ms"),
                                                             data.get("load_ms")),
        [OpTime(o["name"], o["op"], o["avg_ms"]) for o in data.get("ops", [])], data.get("machine", {}), outputs,
        partial, error,
    )


class _Session:
    """One authenticated connection shared by every ssh/scp call of a run (OpenSSH connection multiplexing):
    a slow board or a loaded link pays the key exchange once, not four times. ``close`` ends the master."""

    def __init__(self, dev: SshDevice, opts: SshOptions, tmp: Path) -> None:
        self.dev, self.opts = dev, opts
        if opts.identity and not Path(opts.identity).expanduser().is_file():
            raise BadInputError(f"identity file {opts.identity} does not exist; check --identity")
        self.control = tmp / "cm"

    def base(self, tool: str) -> list[str]:
        cmd = [tool, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.opts.connect_timeout}",
               "-o", "StrictHostKeyChecking=accept-new", "-o", "ControlMaster=auto",
               "-o", f"ControlPath={self.control}", "-o", "ControlPersist=60"]
        for o in self.opts.options:
            cmd += ["-o", o]
        if self.opts.identity:
            cmd += ["-i", str(Path(self.opts.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.dev.port:
            cmd += ["-P" if tool == "scp" else "-p", str(self.dev.port)]
        return cmd

    def run(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        return self._call([*self.base("ssh"), self.dev.destination, command], timeout, command.split()[0])

    def check(self, command: str, what: str) -> str:
        proc = self.run(command, self.opts.connect_timeout + 60)
        if proc.returncode != 0:
            reason = _ssh_reason(proc.stderr) if proc.returncode == 255 else _last(proc.stderr)
            raise DeviceError(f"{self.dev}: {what} failed: {reason}")
        return proc.stdout

    def copy(self, sources: list[str], target: str, what: str) -> None:
        proc = self._call([*self.base("scp"), "-q", *sources, target], self.opts.run_timeout, what)
        if proc.returncode != 0:
            raise DeviceError(f"{self.dev}: {what} failed: {_ssh_reason(proc.stderr)}")

    def close(self) -> None:
        if self.control.exists():
            subprocess.run([*self.base("ssh"), "-O", "exit", self.dev.destination], capture_output=True, timeout=30)

    def _call(self, cmd: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise BadInputError(f"the OpenSSH client ({cmd[0]}) is not installed; install it"
                                " (apt-get install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.dev}: no answer within {timeout:.0f} s while {what}") from None


def _ssh_reason(stderr: str) -> str:
    """ssh's own failure (exit 255) as a cause and a fix."""
    text = stderr.lower()
    if "permission denied" in text:
        return "authentication failed (key refused); pass the right key with --identity or add yours to the device"
    if "host key verification failed" in text or "remote host identification has changed" in text:
        return "host key verification failed; check the device's key in ~/.ssh/known_hosts"
    unreachable = ("connection refused", "timed out", "no route to host", "could not resolve", "network is unreachable",
                   "name or service not known")
    if any(u in text for u in unreachable):
        return f"host unreachable ({_last(stderr)}); check the address, port and that sshd runs"
    return _last(stderr) or "ssh failed"


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently added")]
    return lines[-1] if lines else ""
