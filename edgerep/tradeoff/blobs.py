"""Files as bytes and back: how checkpoints, photos and artifacts travel through Ray's object store.

A tar in memory keeps folders (``.mlpackage``, class-per-folder photos) whole; extraction uses tarfile's
``data`` filter, so a blob can never write outside the folder it is unpacked into.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def pack(path: str | Path) -> bytes:
    """A file or a folder (its contents, not the folder itself) as tar bytes."""
    path = Path(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(path, arcname=path.name)
    return buf.getvalue()


def unpack(blob: bytes, folder: str | Path) -> Path:
    """Extract ``blob`` into ``folder`` (created if needed) and return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(folder, filter="data")
    return folder
