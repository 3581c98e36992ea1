"""edgerep's own terminal output, kept apart from the converters' noise: status lines, progress bars, captured logs.

Converters and runtimes write to the process's stdout/stderr from Python (warnings, prints, tqdm bars) and from
native code (absl, oneDNN, failed ``.so`` loads of torchao), about ten lines per TFLite export. ``captured()``
redirects both, at the file-descriptor level, while a third-party step runs; what they wrote is shown only when
the step fails, or always with ``set_verbose(True)`` (the CLI's ``--verbose``). edgerep's own lines go through
``stream()``, which stays the real stderr meanwhile, so they are the only ones a user sees.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["captured", "progress_bar", "set_verbose", "status", "stream"]

_SHOWN_ON_FAILURE = 60  # lines of a failed step's captured output replayed before the error
_state: dict = {"verbose": False, "console": None}


def set_verbose(verbose: bool) -> None:
    """Show third-party output as it happens (True) or capture it (False, the default)."""
    _state["verbose"] = bool(verbose)


def stream() -> TextIO:
    """Where edgerep's own lines go: stderr, even while a step's output is captured."""
    return _state["console"] or sys.stderr


def status(msg: str) -> None:
    """A status line on stderr, so stdout stays clean for ``--json``."""
    print(msg + " ...", file=stream(), flush=True)


class _Console(io.TextIOBase):
    """A file that always writes to ``stream()`` (a bar made before a capture must not write into it)."""

    def write(self, text: str) -> int:
        return stream().write(text)

    def flush(self) -> None:
        stream().flush()

    def isatty(self) -> bool:
        return _isatty(stream())


def progress_bar(what: str, unit: str = "images") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback: a tqdm bar on a terminal, else a plain line at every quarter.

    The bar closes itself when ``done == total``; CI logs get at most five lines per step.
    """
    bar = None
    shown = [-1]

    def update(done: int, total: int) -> None:
        nonlocal bar
        if _isatty(stream()):
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=total, desc=what, unit=f" {unit}", file=_Console(), leave=False, dynamic_ncols=True)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
            return
        quarter = 4 * done // max(total, 1)
        if quarter > shown[0] or done >= total:
            shown[0] = quarter
            print(f"  {what}: {done}/{total} {unit}", file=stream(), flush=True)

    return update


@contextmanager
def captured(step: str) -> Iterator[None]:
    """Capture what third-party code writes to stdout/stderr (Python and native) while ``step`` runs.

    On an exception (not Ctrl-C) the last lines are replayed on stderr under a header naming the step, then the
    exception propagates; on success they are dropped. Nested uses and ``--verbose`` capture nothing.
    """
    if _state["verbose"] or _state["console"] is not None:
        yield
        return
    for f in (sys.stdout, sys.stderr):
        f.flush()
    real_stderr = _fileno(sys.stderr) == 2
    saved = (os.dup(1), os.dup(2))
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1) if real_stderr else sys.stderr
    sink = tempfile.TemporaryFile()
    text = io.TextIOWrapper(open(sink.fileno(), "wb", closefd=False), line_buffering=True, errors="replace")
    python_streams = (sys.stdout, sys.stderr)
    failed = False
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    sys.stdout = sys.stderr = text
    _state["console"] = console
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException:
        failed = True
        raise
    finally:
        text.flush()
        sys.stdout, sys.stderr = python_streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        _state["console"] = None
        if failed:
            _replay(step, sink, console)
        if console is not sys.stderr:
            console.close()
        text.close()
        sink.close()


def _replay(step: str, sink, console: TextIO) -> None:
    sink.seek(0)
    lines = sink.read().decode(errors="replace").rstrip().splitlines()
    if not lines:
        return
    shown = lines[-_SHOWN_ON_FAILURE:]
    more = f", last {len(shown)} of {len(lines)} lines" if len(shown) < len(lines) else ""
    print(f"--- output of {step} (it failed{more}) ---", *shown, "---", sep="\n", file=console, flush=True)


def _fileno(f: object) -> int | None:
    try:
        return f.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _isatty(f: object) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False
