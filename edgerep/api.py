"""The user's story as plain functions; the CLI is a thin layer over these, and notebooks call them directly.

    model, info = edgerep.load_model("repvgg_a0", "ck.pth")      # any layout, detected by structure
    deployed, report = edgerep.deploy(model, name="repvgg_a0")     # fuse + prove equivalence
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoints.io import read_checkpoint
from .checkpoints.load import LoadInfo, load_model, save_checkpoint
from .errors import BadInputError, VerificationError
from .reparam import count_blocks, reparameterize
from .verify import DEFAULT_RTOL, DeployReport, verify_deploy
from .zoo import get_spec

__all__ = ["deploy", "deploy_checkpoint", "DeployResult", "load_model"]


def deploy(
    model: nn.Module,
    *,
    name: str = "model",
    input_size: tuple[int, int, int] = (3, 224, 224),
    rtol: float = DEFAULT_RTOL,
    images: Tensor | None = None,
    references: list[tuple[str, Tensor, Tensor]] = (),
    latency: bool = True,
    train_mode: str = "fix",
) -> tuple[nn.Module, DeployReport]:
    """Fuse every re-param block of ``model`` and prove the deploy form computes the same function.

    Raises ``VerificationError`` (with ``.report``) when any check exceeds ``rtol``; the training model
    is left untouched either way.
    """
    blocks = count_blocks(model)
    deployed = reparameterize(model, train_mode=train_mode)
    report = verify_deploy(
        model,
        deployed,
        name=name,
        input_size=input_size,
        blocks_fused=blocks,
        rtol=rtol,
        images=images,
        references=references,
        latency=latency,
    )
    if not report.passed:
        worst = max(report.checks, key=lambda c: c.rel)
        raise VerificationError(
            f"{name}: deploy form differs from its training form: rel error {worst.rel:.3g} > {rtol:g}"
            f" ({worst.form} on {worst.inputs} vs {worst.reference})",
            report,
        )
    return deployed, report


@dataclass
class DeployResult:
    model: nn.Module
    report: DeployReport
    source: LoadInfo
    output: Path | None = None


def deploy_checkpoint(
    name: str,
    checkpoint: str | Path,
    *,
    output: str | Path | None = None,
    layout: str | None = None,
    rtol: float = DEFAULT_RTOL,
    images: Tensor | None = None,
    images_label: str = "real images",
    latency: bool = True,
) -> DeployResult:
    """Load a train-form checkpoint in any known layout, deploy it, verify, and write the deploy checkpoint.

    Reference outputs stored in the checkpoint file (``input`` with ``output_train`` / ``output_deploy``,
    as the fixtures of other projects carry them) become checks too. Nothing is written unless every
    check passes; the file appears atomically.
    """
    if output is not None:
        _check_writable(Path(output))
    model, info = load_model(name, checkpoint, layout=layout, form="train")
    input_size = _input_size(name, info)
    references = _references(checkpoint)
    deployed, report = deploy(
        model,
        name=name,
        input_size=input_size,
        rtol=rtol,
        images=_fit_images(images, input_size),
        references=references,
        latency=latency,
    )
    if images is not None:
        for c in report.checks:
            c.inputs = c.inputs.replace("real images", images_label)
    out = None
    if output is not None:
        out = Path(output)
        save_checkpoint(
            out,
            deployed,
            model=name,
            form="deploy",
            num_classes=info.num_classes,
            extra={"source_sha256": info.sha256, "source_layout": info.layout, "worst_rel": report.worst_rel},
        )
    return DeployResult(deployed, report, info, out)


def _input_size(name: str, info: LoadInfo) -> tuple[int, int, int]:
    size = getattr(info, "input_size", None)
    return tuple(size) if size else get_spec(name).input_size


def _references(checkpoint: str | Path) -> list[tuple[str, Tensor, Tensor]]:
    obj = read_checkpoint(checkpoint)
    x = obj.get("input")
    if not isinstance(x, Tensor):
        return []
    refs = []
    for key, label in (("output_train", "source train output"), ("output_deploy", "source deploy output")):
        if isinstance(obj.get(key), Tensor):
            refs.append((label, x.float(), obj[key].float()))
    return refs


def _fit_images(images: Tensor | None, input_size: tuple[int, int, int]) -> Tensor | None:
    """Real images at the model's input size (the shipped photos are small; models may be 224 px)."""
    if images is None or tuple(images.shape[1:]) == tuple(input_size):
        return images
    return torch.nn.functional.interpolate(images, size=input_size[1:], mode="bilinear", align_corners=False)


def _check_writable(path: Path) -> None:
    """Fail before the slow work, not after it: the output folder must exist and be writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BadInputError(f"output {path} is a directory; give a file name such as {path / 'deploy.pt'}")
    if not parent.is_dir():
        raise BadInputError(f"output folder {parent} does not exist; create it or choose another -o path")
    import os

    if not os.access(parent, os.W_OK):
        raise BadInputError(f"output folder {parent} is not writable; choose another -o path")
