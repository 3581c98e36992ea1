"""The JSON manifest beside every artifact: what it is, how to feed it, how it was checked, and with which tools.

An app or a CI job reads the manifest instead of guessing: input name/shape/layout/dtype, the exact
preprocessing, the labels, quantization parameters, and the validation evidence that let it be written.
Hashes tie it to its artifact and to the source checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path

MANIFEST_VERSION = 1


def manifest_path(artifact: Path) -> Path:
    """``model-int8.onnx`` -> ``model-int8.onnx.json`` (works for directory artifacts such as .mlpackage)."""
    return artifact.with_name(artifact.name + ".json")


def size_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tool_versions(packages: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Versions of edgerep, python, torch, numpy and the target's own packages ("not installed" if absent)."""
    versions = {"python": platform.python_version()}
    for name in ("edgerep", "torch", "numpy", *packages):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def read_manifest(path: Path) -> dict:
    return json.loads(Path(path).read_text())
