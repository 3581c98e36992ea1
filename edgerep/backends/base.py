"""The one interface every export target implements (ONNX, TFLite, Core ML; ExecuTorch later).

A backend turns a *deploy-form* PyTorch model into an artifact file and runs an artifact on inputs.
It knows nothing of checkpoints, validation thresholds, manifests or the CLI: ``edgerep.export``
orchestrates those, so adding a target is one backend module plus one ``targets/<name>.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from torch import Tensor, nn


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


class Backend(Protocol):
    name: str
    suffix: str  # ".onnx", ".tflite", ".mlpackage"

    def export(self, model: nn.Module, request: ExportRequest, path: Path) -> ExportInfo:
        """Write the artifact for ``model`` (eval mode, deploy form) to ``path`` (a temporary path)."""

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the artifact on NCHW float32 ``inputs`` (preprocessed) and return float32 outputs.

        Backends with other I/O (NHWC, int8 quantized I/O) convert inside, so callers always compare
        like with like.
        """
