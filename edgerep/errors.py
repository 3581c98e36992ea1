"""User-facing errors: each says what is wrong, where, and how to fix it, in one line.

The CLI prints ``error: <message>`` and exits with ``exit_code``; the Python API raises them as is.
"""

from __future__ import annotations


class EdgerepError(Exception):
    """Base of every error edgerep reports to a user instead of a traceback."""

    exit_code = 2


class BadInputError(EdgerepError):
    """The user's input (file, name, option) cannot be used; the message says how to fix it."""


class CheckpointError(BadInputError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


class MissingDependencyError(BadInputError):
    """An optional dependency is not installed; the message names the extra to install."""


class VerificationError(EdgerepError):
    """A converted or exported model does not compute what its source computes (exit 1).

    ``report`` carries the full evidence (every check), so callers can show more than the one line.
    """

    exit_code = 1

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class Interrupted(KeyboardInterrupt):
    """Ctrl-C after some outputs were finished: the message names those kept (each complete, written atomically)."""

    def __init__(self, kept: list[str]) -> None:
        self.kept = kept
        super().__init__(
            f"kept {len(kept)} finished and validated: {', '.join(kept)}; the one in progress was not written"
            if kept else "nothing was written"
        )


def require(module: str, extra: str):
    """Import an optional dependency, or raise a one-line hint naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install \"edgerep[{extra}]\""
        ) from None
