"""Backend registry: a target's ``backend`` name is the module ``edgerep.backends.<name>``, imported on demand.

Importing lazily keeps ``import edgerep`` free of onnx / coremltools / litert, and turns a missing optional
dependency into the one-line install hint of ``MissingDependencyError`` instead of a traceback. A backend
module exposes ``BACKEND`` (an object satisfying ``base.Backend``); adding a target needs no edit here.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..errors import BadInputError, MissingDependencyError
from .base import Backend, ExportInfo, ExportRequest

__all__ = ["Backend", "ExportInfo", "ExportRequest", "get_backend"]


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
