"""The files the README, docs/, code and tests point readers to exist (modules and tests move; pointers rot)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POINTER = re.compile(r"\b(?:edgerep|bench|examples|docs|tests)/[a-z0-9_/.-]+\.(?:py|md|toml|json)\b")


def test_paths_named_in_docs_and_code_exist() -> None:
    sources = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "targets").glob("*.toml"),
               *(REPO / "edgerep").rglob("*.py"), *(REPO / "bench").glob("*.py"), *(REPO / "examples").glob("*.py"),
               *(REPO / "tests").rglob("*.py"), *(REPO / "tests").rglob("*.md")]
    missing = sorted({f"{src.relative_to(REPO)}: {m}" for src in sources for m in POINTER.findall(src.read_text())
                      if not (REPO / m).exists()})
    assert len(sources) > 50 and not missing, missing
