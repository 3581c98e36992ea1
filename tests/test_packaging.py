"""The wheel carries everything an installed edgerep needs: every subpackage, targets, shipped model and photos."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("edgerep-*.whl")
    return set(zipfile.ZipFile(whl).namelist())


def test_every_subpackage_is_in_the_wheel(wheel_names):
    for init in (ROOT / "edgerep").rglob("__init__.py"):
        rel = init.relative_to(ROOT).as_posix()
        assert rel in wheel_names, f"{rel} missing: add its package to [tool.setuptools] packages in pyproject.toml"


def test_data_ships_in_the_wheel(wheel_names):
    for folder, package in (("targets", "_targets"), ("device_profiles", "_device_profiles")):
        tomls = list((ROOT / folder).glob("*.toml"))
        assert tomls
        for toml in tomls:
            assert f"edgerep/{package}/{toml.name}" in wheel_names
    assert "edgerep/data/models/repghostnet_050_cifar10.pt" in wheel_names
    assert "edgerep/data/cifar10/SOURCE.md" in wheel_names
    assert sum(n.startswith("edgerep/data/cifar10/test/") and n.endswith(".jpg") for n in wheel_names) == 200
