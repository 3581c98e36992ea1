"""The user's story as plain functions; the CLI is a thin layer over these, and notebooks call them directly.

    model, info = edgerep.load_model("repvgg_a0", "ck.pth")      # any layout, detected by structure
    deployed, report = edgerep.deploy(model, name="repvgg_a0")     # fuse + prove equivalence
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from .checkpoints.io import read_checkpoint
from .checkpoints.load import LoadInfo, load_model, save_checkpoint, sha256_file
from .errors import BadInputError, EdgerepError, VerificationError
from .images import Preprocess, list_images, load_images
from .reparam import count_blocks, reparameterize
from .verify import DEFAULT_RTOL, DeployReport, verify_deploy
from .zoo import get_spec

if TYPE_CHECKING:
    from .export import ExportResult

__all__ = ["DeployResult", "deploy", "deploy_checkpoint", "deploy_program", "export_checkpoint", "load_model",
           "preprocess_of"]


def deploy(
    model: nn.Module,
    *,
    name: str = "model",
    input_size: tuple[int, int, int] = (3, 224, 224),
    rtol: float = DEFAULT_RTOL,
    images: Tensor | None = None,
    images_label: str = "real images",
    references: list[tuple[str, Tensor, Tensor]] = (),
    latency: bool = True,
    train_mode: str = "fix",
    generic: bool = False,
) -> tuple[nn.Module, DeployReport]:
    """Fuse every re-param block of ``model`` and prove the deploy form computes the same function.

    ``generic`` uses the graph pass that knows no block class (``edgerep.reparam.generic``) instead of the
    blocks' own ``fuse()``; its deploy form is a ``torch.fx.GraphModule``. Raises ``VerificationError``
    (with ``.report``) when any check exceeds ``rtol``; the training model is left untouched either way.
    """
    if generic:
        from .reparam.generic import generic_pass

        example = next(model.parameters()).new_zeros(1, *input_size)
        deployed, greport = generic_pass(model, example, train_mode=train_mode)
        blocks = greport.summary()
        unmerged = [str(r) for r in greport.skipped] + [f"{m}: {why}" for m, why in greport.opaque_modules.items()]
    else:
        blocks, unmerged = count_blocks(model), []
        deployed = _msgc_dynamic(reparameterize(model, train_mode=train_mode), blocks)
    report = verify_deploy(
        model,
        deployed,
        name=name,
        input_size=input_size,
        blocks_fused=blocks,
        rtol=rtol,
        images=images,
        images_label=images_label,
        references=references,
        latency=latency,
    )
    report.unmerged = unmerged
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
    model_input: Tensor | None = None  # a ``.pt2`` program's example input (its shape is the artifact's)


def _msgc_dynamic(model: nn.Module, blocks: dict[str, int]) -> nn.Module:
    """MobileNetV2-MSGC has no re-param blocks; its deploy form is the exact "dynamic" network of standard ops
    (the static form, masks fixed offline, is an approximation: ``edgerep.msgc.to_static``)."""
    from .zoo.msgc import MobileNetV2MSGC

    if not isinstance(model, MobileNetV2MSGC):
        return model
    from .msgc import to_dynamic

    deployed = to_dynamic(model)
    blocks["MSGCBlock -> dynamic form"] = sum(1 for m in deployed.modules() if type(m).__name__ == "DynamicMSGCBlock")
    return deployed


def deploy_checkpoint(
    name: str | None,
    checkpoint: str | Path,
    *,
    output: str | Path | None = None,
    layout: str | None = None,
    rtol: float = DEFAULT_RTOL,
    images: str | Path | None = None,
    n_images: int = 8,
    latency: bool = True,
    generic: bool = False,
) -> DeployResult:
    """Load a train-form checkpoint in any known layout, deploy it, verify, and write the deploy checkpoint.

    ``name`` may be None for edgerep checkpoints (their meta names the model). ``images`` is a folder of
    real photos for the check. Reference outputs stored in the checkpoint file (``input`` with
    ``output_train`` / ``output_deploy``, as the fixtures of other projects carry them) become checks
    too. Nothing is written unless every check passes; the file appears atomically. ``generic``: see
    ``deploy``; it only verifies (its traced deploy form is not a zoo architecture a checkpoint can load into).
    """
    if is_program(checkpoint):
        return deploy_program(checkpoint, output=output, rtol=rtol, images=images, n_images=n_images,
                              latency=latency)
    if generic and output is not None:
        raise BadInputError(
            "--generic only verifies: its deploy form is a traced graph, not a zoo architecture a checkpoint "
            "loads into; drop -o, or write the checkpoint without --generic"
        )
    if output is not None:
        _check_writable(Path(output))
    obj = read_checkpoint(checkpoint)
    name = name or model_name_of(obj, checkpoint)
    model, info = load_model(name, obj, layout=layout, form="train", where=str(checkpoint))
    if output is not None and get_spec(name).family == "msgc":
        raise BadInputError(
            f"{name}: its deploy form (per-sample gates as standard ops) has no checkpoint layout to load back; "
            "drop -o, and give the train-form checkpoint to `edgerep export`, which deploys it on the fly"
        )
    info = replace(info, path=Path(checkpoint), sha256=sha256_file(checkpoint))
    pre = preprocess_of(name, obj)
    photos, label = (None, "")
    if images is not None:
        photos, label = _sample_images(images, pre, n_images)
    deployed, report = deploy(
        model,
        name=name,
        input_size=(3, *pre.size),
        rtol=rtol,
        images=photos,
        images_label=label,
        references=_references(obj),
        latency=latency,
        generic=generic,
    )
    out = None
    if output is not None:
        meta = checkpoint_meta(obj)
        extra = {k: v for k, v in meta.items() if k in _CARRIED_META}
        extra.update(source_sha256=info.sha256, source_layout=info.layout, worst_rel=report.worst_rel)
        out = save_checkpoint(output, deployed, model=name, form="deploy", num_classes=info.num_classes, extra=extra)
    return DeployResult(deployed, report, info, out)


def is_program(path: str | Path | None) -> bool:
    """A ``torch.export.save``'d program (``.pt2``): any architecture, read without importing its code."""
    return path is not None and str(path).lower().endswith(".pt2")


def program_preprocess(example: Tensor) -> Preprocess:
    """A program records its input shape only: ImageNet normalisation, no crop margin (the input as it is)."""
    from .zoo.registry import IMAGENET_MEAN, IMAGENET_STD

    return Preprocess.for_input(tuple(example.shape[1:]), IMAGENET_MEAN, IMAGENET_STD, 1.0)


def deploy_program(
    path: str | Path,
    *,
    output: str | Path | None = None,
    rtol: float = DEFAULT_RTOL,
    images: str | Path | None = None,
    n_images: int = 8,
    latency: bool = True,
) -> DeployResult:
    """A ``.pt2`` program re-parameterized by the generic (ATen) pass and verified against the program itself.

    The program is read by ``edgerep.checkpoints.pt2.read_program`` (no code from the file runs). ``output``
    (a ``.pt2``) receives the deploy form, exported again, written atomically after every check passed.
    """
    import torch

    from .checkpoints.pt2 import program_example, read_program
    from .reparam.generic.aten import export_program, program_module

    if output is not None:
        if not is_program(output):
            raise BadInputError(f"output {output}: a program's deploy form is written as a .pt2 file; use -o NAME.pt2")
        _check_writable(Path(output))
    ep = read_program(path)
    example = program_example(ep, path)
    source = program_module(ep)
    if images is not None and example.shape[1] != 3:
        images = None  # photos are RGB; a program of another channel count is checked on random inputs only
    photos, label = (None, "")
    pre = program_preprocess(example)
    if images is not None:
        photos, label = _sample_images(images, pre, n_images)
    name = Path(path).stem
    deployed, report = deploy(source, name=name, input_size=tuple(example.shape[1:]), rtol=rtol, images=photos,
                              images_label=label, latency=latency, generic=True)
    with torch.no_grad():
        out = source(example)
    classes = int(out.shape[1]) if isinstance(out, Tensor) and out.dim() == 2 else 0  # 0: not a classifier
    info = LoadInfo(Path(path), sha256_file(path), "pt2", "train", classes, name)
    out = None
    if output is not None:
        out = Path(output)
        tmp = out.with_name(f".{out.stem}.tmp.pt2")
        try:
            torch.export.save(export_program(deployed, example), str(tmp))
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return DeployResult(deployed, report, info, out, example)


# What a deploy checkpoint keeps from its train-form source: what export and eval need later.
_CARRIED_META = ("input_size", "mean", "std", "labels", "crop_pct")


def checkpoint_meta(obj: dict) -> dict:
    meta = obj.get("meta")
    return meta if isinstance(meta, dict) else {}


def model_name_of(obj: dict, where: str | Path) -> str:
    """The zoo name an edgerep checkpoint records; other layouts need it from the user."""
    name = checkpoint_meta(obj).get("model")
    if isinstance(name, str) and name:
        return name
    raise BadInputError(
        f"checkpoint {where} does not record its model; name it: edgerep deploy MODEL --checkpoint {where}"
        " (see `edgerep models`)"
    )


def preprocess_of(name: str, obj: dict | None = None) -> Preprocess:
    """Input geometry and normalisation: the checkpoint's own record first, else the zoo's defaults."""
    spec = get_spec(name)
    meta = checkpoint_meta(obj or {})
    input_size = meta.get("input_size", spec.input_size)
    crop_pct = meta.get("crop_pct", 0.875 if min(input_size[1:]) >= 128 else 1.0)
    return Preprocess.for_input(input_size, meta.get("mean", spec.mean), meta.get("std", spec.std), crop_pct)


def _sample_images(folder: str | Path, pre: Preprocess, n: int) -> tuple[Tensor, str]:
    """``n`` photos spread evenly over the folder (so every class is likely represented)."""
    items = list_images(folder)
    step = max(1, len(items.files) // n)
    files = items.files[::step][:n]
    return load_images(files, pre).images, f"{len(files)} photos from {Path(folder).name}/"


def _references(obj: dict) -> list[tuple[str, Tensor, Tensor]]:
    x = obj.get("input")
    if not isinstance(x, Tensor):
        return []
    refs = []
    for key, label in (("output_train", "source train output"), ("output_deploy", "source deploy output")):
        if isinstance(obj.get(key), Tensor):
            refs.append((label, x.float(), obj[key].float()))
    return refs


def _check_writable(path: Path) -> None:
    """Fail before the slow work, not after it: the output folder must exist and be writable."""
    parent = path.parent
    if path.is_dir():
        raise BadInputError(f"output {path} is a directory; give a file name such as {path / 'deploy.pt'}")
    if not parent.is_dir():
        raise BadInputError(f"output folder {parent} does not exist; create it or choose another -o path")
    if not os.access(parent, os.W_OK):
        raise BadInputError(f"output folder {parent} is not writable; choose another -o path")


def export_checkpoint(
    name: str | None,
    checkpoint: str | Path,
    *,
    plan: list[tuple[str, str]],
    output_dir: str | Path,
    calibration: str | Path | None = None,
    validation: str | Path | None = None,
    layout: str | None = None,
    options: dict | None = None,
    tolerance: dict | None = None,
    progress=None,
) -> tuple[list[tuple[str, str, ExportResult | EdgerepError]], LoadInfo]:
    """Load a checkpoint (train form is deployed and verified first), export every (target, precision) of ``plan``.

    Every (target, precision) is checked against its target file before any slow work. A failed
    validation or a layer the target cannot convert is returned in its row (the other artifacts are
    still built); other bad input raises.
    """
    from .backends.base import UnsupportedLayerError
    from .export import export
    from .targets import get_target

    for t, p in plan:
        tgt = get_target(t)
        tgt.precision(p)
        tgt.resolve_options(options)
    if is_program(checkpoint):
        if progress:
            progress(f"re-parameterizing the program {checkpoint} (generic pass) and verifying it")
        result = deploy_program(checkpoint, latency=False)
        model, info, pre, labels = result.model, result.source, program_preprocess(result.model_input), None
        name = info.model
    else:
        obj = read_checkpoint(checkpoint)
        name = name or model_name_of(obj, checkpoint)
        model, info = load_model(name, obj, layout=layout, where=str(checkpoint))
        info = replace(info, path=Path(checkpoint), sha256=sha256_file(checkpoint))
        pre = preprocess_of(name, obj)
        if info.form == "train":
            if progress:
                progress(f"fusing {name} (train-form checkpoint) and verifying the deploy form")
            model, _ = deploy(model, name=name, input_size=(3, *pre.size), latency=False)
        labels = checkpoint_meta(obj).get("labels")
    rows = []
    for t, p in plan:
        if progress:
            progress(f"exporting {name} -> {t} {p}")
        try:
            result = export(
                model, name=name, target=t, precision=p, input_size=(3, *pre.size), output_dir=output_dir,
                preprocess=pre, calibration=calibration, validation=validation, labels=labels, source=info,
                options=options, tolerance=tolerance, progress=progress,
            )
        except (VerificationError, UnsupportedLayerError) as exc:  # the other targets may still work
            result = exc
        rows.append((t, p, result))
    return rows, info
