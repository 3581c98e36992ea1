"""The ``edgerep`` command: parse arguments, dispatch to one module per command, map errors to exit codes.

Exit codes: 0 done, 1 verification or gate failed, 2 bad input (one line on stderr, no traceback).
Each command lives in its own module of this package and exposes ``ORDER`` (its place in ``--help``),
``register(sub)`` (adds its subparser and sets ``func``); new commands are found without editing this file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import warnings

from .._version import __version__
from ..console import set_verbose
from ..errors import EdgerepError, Interrupted, VerificationError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a value refused at parse time (exit 2, one line)
        return exc.code if isinstance(exc.code, int) else 2
    warnings.formatwarning = lambda message, category, *_a, **_k: f"warning: {message}\n"
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    set_verbose(args.verbose)
    try:
        return args.func(args)
    except VerificationError as exc:
        if exc.report is not None and not getattr(args, "json", False):
            from ..proof.report import format_deploy_report

            print(format_deploy_report(exc.report))
        elif exc.report is not None:
            print(json.dumps({"ok": False, "error": str(exc), "report": exc.report.to_dict()}, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except EdgerepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # every command writes through temporary paths: nothing is left half-written
        kept = str(exc) if isinstance(exc, Interrupted) else "nothing was written"
        print(f"error: interrupted; {kept}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error shape: one ``error:`` line naming the command's --help, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="edgerep",
        description="Re-parameterized CNNs from training checkpoint to verified phone artifact.",
        epilog="Run `edgerep COMMAND --help` for each command's options and examples.",
    )
    p.add_argument("--version", action="version", version=f"edgerep {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for module in sorted(_command_modules(), key=lambda m: m.ORDER):
        module.register(sub)
    for command in sub.choices.values():  # every command: converters' own logs only on request (or on failure)
        command.add_argument("-v", "--verbose", action="store_true",
                             help="show the converters' and runtimes' own log output (hidden unless a step fails)")
    return p


def _command_modules() -> list:
    """Every module of this package with a ``register`` function; helpers (``common``) have none."""
    found = (importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__))
    return [m for m in found if hasattr(m, "register")]


if __name__ == "__main__":
    sys.exit(main())
