"""Quiet by default: third-party output captured at the file-descriptor level, shown with --verbose or on failure;
progress bars that degrade to plain lines off a terminal."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import warnings

import pytest
import torch
from torch import nn

from edgerep import console


@pytest.fixture(autouse=True)
def _quiet():
    console.set_verbose(False)
    yield
    console.set_verbose(False)


def _noisy_step() -> None:
    """What converters do: Python prints and warnings, and native writes to fds 1 and 2 (absl, oneDNN)."""
    print("python stdout noise")
    print("python stderr noise", file=sys.stderr)
    warnings.warn("deprecation noise", FutureWarning, stacklevel=1)
    os.write(1, b"native stdout noise\n")
    os.write(2, b"native stderr noise\n")
    libc = ctypes.CDLL(None)
    libc.dprintf(2, b"libc stderr noise\n")


def test_captured_hides_python_and_native_output_but_not_edgereps_own(capfd) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        console.status("before")
        with console.captured("a noisy step"):
            _noisy_step()
            console.status("during")  # edgerep's own line still reaches the user
        console.status("after")
    out, err = capfd.readouterr()
    assert out == ""
    assert err.splitlines() == ["before ...", "during ...", "after ..."]


def test_a_failing_step_shows_what_it_wrote(capfd) -> None:
    with pytest.raises(RuntimeError, match="converter crashed"), console.captured("the converter"):
        os.write(2, b"native detail that explains the crash\n")
        raise RuntimeError("converter crashed")
    _, err = capfd.readouterr()
    assert "--- output of the converter (it failed) ---" in err
    assert "native detail that explains the crash" in err


def test_verbose_shows_everything(capfd) -> None:
    console.set_verbose(True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with console.captured("a noisy step"):
            _noisy_step()
    out, err = capfd.readouterr()
    assert "native stdout noise" in out and "native stderr noise" in err and "libc stderr noise" in err


def test_progress_is_plain_lines_off_a_terminal(capfd) -> None:
    show = console.progress_bar("calibration images")
    for done in range(10, 101, 10):
        show(done, 100)
    _, err = capfd.readouterr()
    assert err.splitlines() == [f"  calibration images: {n}/100 images" for n in (10, 30, 50, 80, 100)]


def test_verbose_flag_on_every_command() -> None:
    import argparse

    from edgerep.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) >= 8 and all("--verbose" in p.format_help() for p in sub.choices.values())


def test_tflite_export_prints_only_edgereps_lines(capfd, tmp_path) -> None:
    if importlib.util.find_spec("litert_torch") is None:  # not imported here: its import logs are part of the test
        pytest.skip("litert-torch is not installed (pip install \"edgerep[tflite]\")")
    from edgerep.export.pipeline import export
    from edgerep.images import Preprocess
    from edgerep.reparam import reparameterize
    from edgerep.reparam.blocks.repvgg import RepVGGBlock

    net = nn.Sequential(RepVGGBlock(3, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    images = torch.rand(4, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # deprecation warnings of the converters would print, were they not captured
        r = export(reparameterize(net), name="tiny", target="tflite", input_size=(3, 16, 16), output_dir=tmp_path,
                   preprocess=Preprocess((16, 16)), validation=images, progress=console.status)
    assert r.validation.passed
    out, err = capfd.readouterr()
    assert out == ""
    assert err.splitlines() == ["exporting tiny to tflite fp32 ...", "validating tiny-fp32.tflite ..."], err
