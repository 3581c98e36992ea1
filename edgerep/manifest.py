"""The JSON manifest beside every artifact: what it is, how to feed it, how it was checked, and with which tools.

An app or a CI job reads the manifest instead of guessing: input name/shape/layout/dtype, the exact
preprocessing, the labels, quantization parameters, and the validation evidence that let it be written.
Hashes tie it to its artifact and to the source checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

MANIFEST_VERSION = 1


def manifest_path(artifact: Path) -> Path:
    """``model-int8.onnx`` -> ``model-int8.onnx.json`` (works for directory artifacts such as .mlpackage)."""
    return artifact.with_name(artifact.name + ".json")


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory artifact (relative names and contents of its files, in sorted order)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


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


def write_manifest(path: Path, manifest: dict) -> Path:
    """Write JSON to ``path`` via a temporary file and ``os.replace``: it appears complete or not at all."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_manifest(path: Path) -> dict:
    return json.loads(Path(path).read_text())
