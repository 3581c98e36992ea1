"""Backend registry: a target's ``backend`` name is the module ``edgerep.backends.<name>``, imported on demand.

Importing lazily keeps ``import edgerep`` free of onnx / coremltools / litert, and turns a missing optional
dependency into the one-line install hint of ``MissingDependencyError`` instead of a traceback. A backend
module exposes ``BACKEND`` (an object satisfying ``base.Backend``); adding a target needs no edit here.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ..errors import BadInputError, EdgerepError, MissingDependencyError
from .base import Backend, ExportInfo, ExportRequest, InputSpec

__all__ = ["Backend", "ExportInfo", "ExportRequest", "InputSpec", "backend_for", "get_backend", "read_input_spec"]


def backend_for(target) -> Backend:
    """The backend of a target (``export.targets.Target``), checked against what its TOML declares.

    A precision or layout listed in the TOML that the code does not implement (or the reverse) is a packaging
    bug, not a user error: it fails loudly here instead of half-way through an export.
    """
    backend = get_backend(target.backend, target.extra)
    for what, declared, listed in (("precisions", backend.precisions, target.precisions),
                                   ("layouts", backend.layouts, target.layouts)):
        if set(declared) != set(listed):
            raise RuntimeError(
                f"targets/{target.name}.toml lists {what} {sorted(listed)} but edgerep/backends/{target.backend}.py"
                f" implements {sorted(declared)}: make them agree"
            )
    return backend


def read_input_spec(target, path: Path) -> InputSpec:
    """The input an artifact of ``target`` declares, read with its runtime; an unloadable file is bad input."""
    backend = get_backend(target.backend, target.extra)  # a missing runtime is a one-line install hint
    try:
        return backend.input_spec(Path(path))
    except EdgerepError:
        raise
    except Exception as exc:  # the runtime's own loader refused the file: corrupt, truncated, not this format
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"cannot load {path} with the {target.name} runtime ({why}); re-export it") from None


def get_backend(name: str, extra: str | None = None) -> Backend:
    """The backend ``name``; ``extra`` is the pip extra named in the hint when its dependencies are missing."""
    module_name = f"{__name__}.{name}"
    if not name.isidentifier() or name == "base" or importlib.util.find_spec(module_name) is None:
        raise BadInputError(f"unknown backend {name!r}; it must be a module edgerep/backends/{name}.py")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing.split(".")[0] == "edgerep":  # our own bug, not a missing dependency: let it show
            raise
        raise MissingDependencyError(
            f"the {name} backend needs {missing or 'a package'}, which is not installed ({exc});"
            f" install it with: pip install \"edgerep[{extra or name}]\""
        ) from None
    backend = getattr(module, "BACKEND", None)
    if backend is None:
        raise BadInputError(f"backend module {module_name} defines no BACKEND object")
    return backend
