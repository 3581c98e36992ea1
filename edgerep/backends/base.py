"""The one interface every export target implements (ONNX, TFLite, Core ML; ExecuTorch later).

A backend turns a *deploy-form* PyTorch model into an artifact file and runs an artifact on inputs.
It knows nothing of checkpoints, validation thresholds, manifests or the CLI: ``edgerep.export.pipeline``
orchestrates those, so adding a target is one backend module plus one ``targets/<name>.toml``.

``conversion_error`` is what every backend raises (inside ``explained``) when its converter fails: one line naming
the user's layer (module path and class) and the op the converter refused, with the converter's reason and a fix.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import BadInputError, EdgerepError


@dataclass(frozen=True)
class ExportRequest:
    """What to build. ``calibration`` (N, 3, H, W float32, preprocessed) is required for static int8.

    ``options`` holds the target's own settings, already validated against its targets/*.toml
    (e.g. ``opset`` for ONNX, ``minimum_deployment_target`` / ``compute_precision`` for Core ML).
    """

    input_shape: tuple[int, int, int, int]
    precision: str
    calibration: Tensor | None = None
    layout: str = "nchw"
    options: dict = field(default_factory=dict)


@dataclass
class ExportInfo:
    """What the backend knows about the artifact it wrote: goes into the manifest."""

    input_name: str
    output_name: str
    input_dtype: str
    quantization: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class InputSpec:
    """An artifact's input as the file itself declares it (a manifest may be stale or hand-edited)."""

    shape: tuple[int, ...]  # batch first; a dynamic batch is -1
    layout: str  # "nchw" or "nhwc"

    @property
    def chw(self) -> tuple[int, int, int]:
        """(C, H, W) of the NCHW tensor a caller feeds (backends transpose NHWC inside ``run``)."""
        s = self.shape
        return (s[1], s[2], s[3]) if self.layout == "nchw" else (s[3], s[1], s[2])

    @property
    def batch(self) -> int | None:
        """The fixed batch the runtime needs, or None when any batch works."""
        return self.shape[0] if self.shape[0] > 0 else None


class Backend(Protocol):
    """One export target's code. ``precisions`` and ``layouts`` are what the code implements; the target's TOML
    lists what users may ask for, and the two must be the same sets (checked when the backend is loaded)."""

    name: str
    suffix: str  # ".onnx", ".tflite", ".mlpackage"
    precisions: tuple[str, ...]
    layouts: tuple[str, ...]

    def export(self, model: nn.Module, request: ExportRequest, path: Path) -> ExportInfo:
        """Write the artifact for ``model`` (eval mode, deploy form) to ``path`` (a temporary path)."""

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the artifact on NCHW float32 ``inputs`` (preprocessed) and return float32 outputs.

        Backends with other I/O (NHWC, int8 quantized I/O) convert inside, so callers always compare
        like with like.
        """

    def input_spec(self, path: Path) -> InputSpec:
        """The artifact's input shape and layout, read from the file with the target's own runtime."""


class UnsupportedLayerError(BadInputError):
    """A target's converter cannot convert some layer of the model; the message names the layer and the op."""


@contextlib.contextmanager
def explained(
    target: str, converter: str, op_patterns: tuple[str, ...], model: nn.Module, example: Tensor, fix: str
) -> Iterator[None]:
    """Run a converter: its failure becomes ``conversion_error``'s one line (edgerep's own errors pass through)."""
    try:
        yield
    except EdgerepError:
        raise
    except Exception as exc:
        raise conversion_error(target, converter, exc, op_patterns, model, example, fix) from exc


def conversion_error(
    target: str,
    converter: str,
    exc: Exception,
    op_patterns: tuple[str, ...],
    model: nn.Module,
    example: Tensor,
    fix: str,
) -> UnsupportedLayerError:
    """A one-line error for a converter failure: which layer, which op, the converter's own reason, what to do.

    Converters name the failing *op* (``aten::cummax``, ``aten.cummax.default``) but not which of the
    user's layers calls it; ``locate_op`` finds that by running the model once. ``op_patterns`` are the
    backend's regexes (first group: the op) for its converter's messages, tried in order on the exception
    and its causes. Callers chain the original exception (``raise ... from exc``) for debugging.
    """
    reason = _reason(exc)
    op = _find_op(exc, op_patterns)
    if op is None:
        return UnsupportedLayerError(f"{target}: {converter} could not convert the model ({reason}); {fix}")
    layers = locate_op(model, example, op)
    where = f"layer {layers[0]}" if layers else "a layer (not located)"
    if len(layers) > 1:
        where += f" (and {len(layers) - 1} more)"
    return UnsupportedLayerError(f"{target} cannot convert {where}: op {op} is not supported by {converter}"
                                 f" ({reason}); {fix}")


def op_key(name: str) -> str:
    """The bare op name in any spelling: ``aten::cummax``, ``torch.ops.aten.cummax.default``, ``cummax`` -> cummax."""
    parts = name.strip().removeprefix("torch.ops.").replace("::", ".").split(".")
    if len(parts) > 1 and parts[0] in ("aten", "prims", "quantized_decomposed"):
        parts = parts[1:]
    return parts[0]


def locate_op(model: nn.Module, example: Tensor, op: str) -> list[str]:
    """Paths (with class) of the innermost modules whose forward calls ``op``, in call order; [] if none.

    One eager forward on ``example`` watches both levels converters name ops at: torch functions
    (``linalg_svdvals``, what TorchScript-based converters see) and ATen ops after decomposition
    (``_linalg_svd``, what torch.export-based converters see).
    """
    key = op_key(op)
    names = {m: n for n, m in model.named_modules()}
    stack: list[nn.Module] = [model]
    found: list[str] = []

    def seen(name: str) -> None:
        if op_key(name) == key:
            where = f"{names[stack[-1]] or '<model>'} ({type(stack[-1]).__name__})"
            if where not in found:
                found.append(where)

    class Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    class Aten(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen(func._schema.name)
            return func(*args, **(kwargs or {}))

    def enter(module: nn.Module, _inputs) -> None:
        stack.append(module)

    def leave(_module: nn.Module, _inputs, _output) -> None:  # returns None: the output stays untouched
        stack.pop()

    hooks = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.no_grad(), Functions(), Aten():
            model(example)
    except Exception:  # noqa: BLE001 - locating is best effort; the converter's error is what gets reported
        pass
    finally:
        for h in hooks:
            h.remove()
    return found


def _find_op(exc: BaseException, patterns: tuple[str, ...]) -> str | None:
    text = ""
    for _ in range(20):  # the exception and what caused it (bounded: chains can loop)
        if exc is None:
            break
        text += f"{exc}\n"
        exc = exc.__cause__ or exc.__context__
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return None


def _reason(exc: Exception) -> str:
    """The converter's own message in one short line (innermost cause of a chained summary, no ANSI colours)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    summary = [ln for ln in text.splitlines() if ln.startswith("<class '")]  # torch.onnx's exception summary
    if summary:
        cls, _, msg = summary[0].partition(">: ")
        line = f"{cls.rsplit('.', 1)[-1].rstrip(chr(39))}: {msg}"
    else:
        line = f"{type(exc).__name__}: " + next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= 200 else line[:197] + "..."
