"""Where edgerep's own data lives, from a checkout and from an installed wheel alike (one lookup for all of it).

Three folders ship with the package: ``targets/`` and ``device_profiles/`` sit at the top of the repository and are
installed as ``edgerep/_targets`` and ``edgerep/_device_profiles`` (see pyproject.toml); ``edgerep/data/`` holds the
shipped model and photos in both cases.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import BadInputError

_PACKAGE = Path(__file__).resolve().parent


def data_folder(name: str, pattern: str = "*.toml") -> Path:
    """``targets`` or ``device_profiles``: the wheel's ``edgerep/_<name>``, else the checkout's ``<repo>/<name>``."""
    candidates = (_PACKAGE / f"_{name}", _PACKAGE.parent / name)
    for root in candidates:
        if root.is_dir() and any(root.glob(pattern)):
            return root
    looked = ", ".join(map(str, candidates))
    raise BadInputError(f"edgerep's {name} files are missing (looked in {looked}); reinstall edgerep")


def shipped_file(rel: str) -> Path:
    """``edgerep/data/<rel>``: the shipped model, its recipe and photos."""
    path = _PACKAGE / "data" / rel
    if not path.exists():
        raise BadInputError(
            f"edgerep's shipped data file data/{rel} is missing (looked in {path}); reinstall edgerep,"
            " or pass the model/images explicitly"
        )
    return path


def cache_dir() -> Path:
    """Where edgerep caches what it builds (aarch64 Python, trained models).

    ``$EDGEREP_CACHE``, else ``$XDG_CACHE_HOME/edgerep``, else ``~/.cache/edgerep``.
    """
    if os.environ.get("EDGEREP_CACHE"):
        return Path(os.environ["EDGEREP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgerep"
