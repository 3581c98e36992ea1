"""Shared test helpers, hypothesis strategies for conv geometry, and the location of the team's shared fixtures."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import reparameterize
from edgerep.zoo import create_model

# One thread: on this 2-core machine, shared with other work, two threads make tiny convs ~1000x slower.
torch.set_num_threads(1)

settings.register_profile(
    "edgerep", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "edgerep"))

# Fusion tolerances, stated once. fp64 proves the math (only rounding remains); fp32 is what users run.
REL_TOL_FP64 = 1e-10
REL_TOL_FP32 = 1e-5
# Random-weight MobileOne-S4: its SE gates see activations ~1e4 and its own train form in fp32 is 1e-3..4e-2
# from its fp64 output, so fusion is judged in fp64 there (bench/zoo_deploy.py measures it; a trained S4 would not
# need this).
ILL_CONDITIONED_FP32 = {"mobileone_s4"}

SHARED = Path(os.environ.get("EDGEREP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "checkpoints"


def shared_path(*parts: str) -> Path:
    """A file under ../shared/: skipped with a reason when absent, a failure under CI=true."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared fixture {p} not found (set EDGEREP_SHARED to the shared/ folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p


class CumMax(torch.nn.Module):
    """A running maximum over channels: no exporter converts aten.cummax (torch.onnx, litert-torch, coremltools)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, 1).values


class SingularValues(torch.nn.Module):
    """linalg.svdvals: neither torch.onnx nor coremltools' torch frontends convert it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``edgerep ARGV`` in-process: (exit code, stdout, stderr)."""
    from edgerep.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """A user error is exactly one ``error: ...`` line on stderr (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def assert_fuses_exactly(block: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> float:
    """Randomize BN stats, fuse in fp64 and fp32, assert both within tolerance; return the fp32 rel error."""
    gen = torch.Generator().manual_seed(seed)
    randomize_bn(block, gen)
    block.eval()
    worst32 = 0.0
    for dtype, tol in ((torch.float64, REL_TOL_FP64), (torch.float32, REL_TOL_FP32)):
        b = block.to(dtype)
        with torch.no_grad():
            ref = b(x.to(dtype))
            fused = reparameterize(b)
            out = fused(x.to(dtype))
        err = output_error(ref, out)
        assert err.rel <= tol, f"{dtype}: rel error {err.rel:.3g} > {tol} (max abs {err.max_abs:.3g})"
        if dtype == torch.float32:
            worst32 = err.rel
    block.float()
    return worst32


# --- hypothesis strategies for conv geometry ------------------------------------------------------

STRIDES = st.sampled_from([1, 2])
ODD_KERNELS = st.sampled_from([1, 3, 5])


def dilations(upto: int = 2) -> st.SearchStrategy[int]:
    return st.sampled_from(range(1, upto + 1))


def spatial(lo: int, hi: int) -> st.SearchStrategy[tuple[int, int]]:
    """An input's (H, W), drawn independently: non-square maps catch height/width mix-ups."""
    return st.tuples(st.integers(lo, hi), st.integers(lo, hi))


@st.composite
def grouped_channels(draw, groups: Sequence[int] = (1, 2, 4), max_per_group: int = 4) -> tuple[int, int]:
    """``(channels, groups)`` of a dense, grouped or depthwise (``groups == channels``) conv.

    Depthwise is drawn on its own because identity kernels go wrong there first: the identity column
    ``o mod (channels / groups)`` is always 0.
    """
    g = draw(st.sampled_from(groups))
    channels = g * draw(st.integers(1, max_per_group))
    return (channels, channels) if draw(st.booleans()) else (channels, g)


@st.composite
def block_channels(draw, groups: Sequence[int] = (1, 2, 4), max_per_group: int = 4) -> tuple[int, int, int]:
    """``(in, out, groups)`` with ``out`` = ``in`` or ``2 * in``, so identity branches both exist and vanish."""
    cin, g = draw(grouped_channels(groups, max_per_group))
    return cin, cin * draw(st.sampled_from([1, 2])), g


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """A conv's output length along one side (to skip inputs too small for any output)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# --- zoo models -------------------------------------------------------------------------------------


def meta_model(name: str, **kwargs) -> torch.nn.Module:
    """Structure only: on the meta device even the big variants cost no memory or init time."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


@dataclass
class TimmRun:
    """A timm checkpoint fixture run through our model: its outputs in both forms, and the deploy model."""

    ckpt: dict
    deploy: torch.nn.Module
    out_train: torch.Tensor
    out_deploy: torch.Tensor
    train_convs: int


def run_timm_fixture(name: str, fixture: str) -> TimmRun:
    """Load ``fixture`` strictly into the zoo model ``name``, run its input in train form, fuse in place, run again."""
    ckpt = torch.load(shared_path("fixtures", "checkpoints", fixture), weights_only=True)
    model = create_model(name).eval()
    model.load_state_dict(ckpt["state_dict"], strict=True)
    train_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    with torch.no_grad():
        out_train = model(ckpt["input"])
        deploy = reparameterize(model, inplace=True)  # the train form is not needed any more
        out_deploy = deploy(ckpt["input"])
    return TimmRun(ckpt, deploy, out_train, out_deploy, train_convs)


# --- a real OpenSSH server on 127.0.0.1 (devices, calibration and Ray tests) ------------------------------

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if SSHD is None or os.geteuid() != 0 or not (shutil.which("ssh-keygen") and shutil.which("ssh")):
        reason = "sshd (openssh-server) not installed or not root: apt-get install -y openssh-server, run as root"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "wrong_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    user = pwd.getpwuid(os.geteuid()).pw_name
    opts = dict(identity=str(d / "client_key"), python=sys.executable,
                options=(f"UserKnownHostsFile={d / 'known_hosts'}", "LogLevel=ERROR"))
    yield {"url": f"ssh://{user}@127.0.0.1:{port}", "port": port, "dir": d, "opts": opts, "user": user}
    proc.terminate()
    proc.wait(timeout=10)


def locked_folder(monkeypatch, folder: Path) -> Path:
    """``folder``, made, whose listing the OS refuses (tests run as root, for whom chmod 000 changes nothing:
    the refusal is simulated where it happens, in ``Path.iterdir``)."""
    folder.mkdir()
    real = Path.iterdir

    def refuse(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    return folder


def ssh_cli_args(sshd: dict) -> list[str]:
    """The CLI flags that reach the ``sshd`` fixture's server (identity, remote python, ssh options)."""
    opts = sshd["opts"]
    return ["--identity", opts["identity"], "--remote-python", opts["python"],
            *[a for o in opts["options"] for a in ("--ssh-option", o)]]


def python_without_onnxruntime(folder: Path) -> Path:
    """A python executable (a wrapper script in ``folder``) whose ``import onnxruntime`` fails: a device without it."""
    blocker = folder / "blocker"
    blocker.mkdir()
    (blocker / "onnxruntime.py").write_text("raise ImportError('No module named onnxruntime')\n")
    wrapper = folder / "python-without-ort"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={blocker} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper

