"""Writing files so that they appear complete or not at all, and refusing unwritable outputs before slow work.

Every file edgerep writes (checkpoints, artifacts, manifests, results, tables, plots) goes through ``atomic_path``:
the content is written to a hidden temporary name in the destination folder, synced, then renamed over the final
name. An interrupted run therefore leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BadInputError

STAGING_PREFIX = ".edgerep-tmp-"


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (a file or a folder) atomically.

    The temporary path may become a file or a folder (an ``.mlpackage``). On an exception it is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        _fsync(tmp)
        replace_path(tmp, path)
    finally:
        _remove(tmp)


def replace_path(src: Path, dst: Path) -> None:
    """``os.replace`` that also replaces a non-empty folder: the old one is renamed aside, then removed."""
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f"{STAGING_PREFIX}old-{uuid.uuid4().hex[:8]}-{dst.name}")
        os.replace(dst, old)
        os.replace(src, dst)
        _remove(old)
    else:
        os.replace(src, dst)


def write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: Path | str, obj: object) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def writable_file(path: Path | str, example: str = "out.json") -> Path:
    """Fail before the slow work, not after it: ``path`` must name a file in an existing, writable folder."""
    p = Path(path)
    if p.is_dir():
        raise BadInputError(f"output {p} is a directory; give a file name such as {p / example}")
    if not p.parent.is_dir():
        raise BadInputError(f"output folder {p.parent} does not exist; create it or choose another -o path")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise BadInputError(f"output folder {p.parent} is not writable; choose another -o path")
    return p


def writable_dir(path: Path | str) -> tuple[Path, bool]:
    """Create the output folder if needed (returns it and whether it was created), failing now if unwritable."""
    p = Path(path)
    created = not p.exists()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create output folder {p} ({exc.strerror}); choose another -o path") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise BadInputError(f"output folder {p} is not writable; choose another -o path")
    return p, created


@contextmanager
def removed_if_empty(path: Path | str) -> Iterator[Path]:
    """Around a run that may create the output folder ``path``: if the run created it (and missing parents) and
    left it empty (refused, failed, interrupted), remove what it created, so no empty ``-o`` folder is left."""
    p = Path(path)
    created = [a for a in (p, *p.parents) if not a.exists()]  # leaf first
    try:
        yield p
    finally:
        for folder in created:
            try:
                folder.rmdir()  # only ever removes an empty folder
            except OSError:
                break


def remove_stale_staging(folder: Path, older_than_s: float = 3600.0) -> None:
    """Remove staging leftovers of killed runs (SIGKILL skips every ``finally``) that are older than an hour."""
    now = time.time()
    for p in folder.glob(f"{STAGING_PREFIX}*"):
        try:
            if now - p.lstat().st_mtime > older_than_s:
                _remove(p)
        except OSError:
            pass


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


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


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
