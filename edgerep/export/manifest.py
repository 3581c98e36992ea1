"""The JSON manifest beside every artifact: what it is, how to feed it, how it was checked, and with which tools.

An app or a CI job reads the manifest instead of guessing: input name/shape/layout/dtype, the exact
preprocessing, the labels, quantization parameters, and the validation evidence that let it be written.
Hashes tie it to its artifact and to the source checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Callable
from pathlib import Path

from ..errors import BadInputError
from ..images import Preprocess

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
    """The manifest as a dict whose known keys have their written types (it may have been edited by hand).

    A manifest that is unreadable, not JSON, or has e.g. ``"artifact": "x"`` or numeric labels is a
    ``BadInputError`` naming the file and the key, never a traceback where the value is first used.
    """
    path = Path(path)
    try:
        man = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(f"cannot read manifest {path} ({exc}); re-export the artifact") from None
    if not isinstance(man, dict):
        raise BadInputError(f"manifest {path} is not a JSON object; re-export the artifact")
    for key, (ok, what) in _SCHEMA.items():
        if key in man and not ok(man[key]):
            raise BadInputError(
                f"manifest {path}: '{key}' must be {what}, got {man[key]!r:.60}; re-export the artifact"
            )
    return man


def manifest_preprocess(man: dict, path: Path) -> Preprocess:
    """The preprocessing recipe a manifest records (``read_manifest`` checked the types, this the values)."""
    recipe = man.get("preprocess")
    if not isinstance(recipe, dict):
        raise BadInputError(f"manifest {path} has no 'preprocess' recipe; re-export the artifact with edgerep export")
    try:
        return Preprocess.from_dict(recipe)
    except (TypeError, ValueError, BadInputError) as exc:
        raise BadInputError(f"manifest {path}: malformed 'preprocess' ({exc}); re-export the artifact") from None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _optional_str(v: object) -> bool:
    return v is None or isinstance(v, str)


def _numbers(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _dims(v: object) -> bool:
    return isinstance(v, list) and all(_is_int(x) or isinstance(x, str) for x in v)  # str: a dynamic dimension


def _names(v: object) -> bool:
    return v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def _fields(**checks: Callable[[object], bool]) -> Callable[[object], bool]:
    """A dict whose listed keys, when present, pass their checks."""
    return lambda d: isinstance(d, dict) and all(k not in d or ok(d[k]) for k, ok in checks.items())


_SCHEMA: dict[str, tuple[Callable[[object], bool], str]] = {
    "model": (_is_str, "a zoo model name"),
    "target": (_is_str, "a target name"),
    "precision": (_is_str, "a precision name"),
    "artifact": (_fields(file=_is_str, sha256=_is_str, size_bytes=_is_int),
                 'an object {"file": name, "sha256": hex, "size_bytes": integer}'),
    "input": (_fields(name=_is_str, shape=_dims, layout=lambda v: v in ("nchw", "nhwc")),
              'an object {"name": ..., "shape": [integers], "layout": "nchw" or "nhwc"}'),
    "preprocess": (_fields(size=_numbers, mean=_numbers, std=_numbers, interpolation=_is_str,
                           resize=lambda v: v is None or _is_int(v)),
                   "an object {size, resize, mean, std, interpolation} as edgerep export writes it"),
    "labels": (_names, "a list of class names (strings) or null"),
    "source": (lambda v: v is None or _fields(path=_optional_str, sha256=_optional_str)(v),
               'null or an object {"path": ..., "sha256": ...}'),
}
