"""The user's story as plain functions; the CLI is a thin layer over these, and notebooks call them directly.

    model, info = edgerep.load_model("repvgg_a0", "ck.pth")      # any layout, detected by structure
    deployed, report = edgerep.deploy(model, name="repvgg_a0")     # fuse + prove equivalence
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from .checkpoints import Checkpoint, LoadInfo, check_geometry, load_model, save_checkpoint
from .console import progress_bar
from .errors import BadInputError, EdgerepError, Interrupted, VerificationError
from .fileio import atomic_path, removed_if_empty, sha256_path, writable_file
from .images import Batch, ImageList, Preprocess, evenly_spaced, list_images, load_images
from .proof.verify import DEFAULT_RTOL, DeployReport, failure_message, verify_deploy
from .reparam import count_blocks, reparameterize
from .zoo import get_spec

if TYPE_CHECKING:
    from .export.pipeline import ExportResult

__all__ = ["DeployResult", "deploy", "deploy_checkpoint", "deploy_program", "export_checkpoint", "load_model"]


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

        def fuse(m: nn.Module) -> nn.Module:
            return generic_pass(m, next(m.parameters()).new_zeros(1, *input_size), train_mode=train_mode)[0]

        example = next(model.parameters()).new_zeros(1, *input_size)
        deployed, greport = generic_pass(model, example, train_mode=train_mode)
        blocks = greport.summary()
        unmerged = [str(r) for r in greport.skipped] + [f"{m}: {why}" for m, why in greport.opaque_modules.items()]
    else:

        def fuse(m: nn.Module) -> nn.Module:
            return _msgc_dynamic(reparameterize(m, train_mode=train_mode), {})

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
        refuse=fuse,  # the fp64 re-check fuses again in float64: the math, without fp32 rounding of the weights
    )
    report.unmerged = unmerged
    if not report.passed:
        raise VerificationError(failure_message(report), report)
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
    checkpoint_layout: str | None = None,
    rtol: float = DEFAULT_RTOL,
    images: str | Path | None = None,
    n_images: int = 8,
    latency: bool = True,
    generic: bool = False,
    overrides: dict | None = None,
) -> DeployResult:
    """Load a train-form checkpoint in any known layout, deploy it, verify, and write the deploy checkpoint.

    ``name`` may be None for edgerep checkpoints (their meta names the model). ``images`` is a folder of
    real photos for the check. Reference outputs stored in the checkpoint file (``input`` with
    ``output_train`` / ``output_deploy``, as the fixtures of other projects carry them) become checks
    too. Nothing is written unless every check passes; the file appears atomically. ``generic``: see
    ``deploy``; it only verifies (its traced deploy form is not a zoo architecture a checkpoint can load into).
    ``overrides`` are the user's geometry (input size, mean, std, labels, ...; see ``Checkpoint``).
    """
    if is_program(checkpoint):
        return deploy_program(checkpoint, output=output, rtol=rtol, images=images, n_images=n_images,
                              latency=latency)
    if generic and output is not None:
        raise BadInputError(
            "--generic only verifies: its deploy form is a traced graph, not a zoo architecture a checkpoint "
            "loads into; drop -o, or write the checkpoint without --generic"
        )
    ck = Checkpoint.open(checkpoint, overrides)
    if output is not None:
        _check_output(Path(output), ck.path)
    name = ck.model_name(name)
    model, info = ck.load(name, layout=checkpoint_layout, form="train")
    check_geometry(model, ck, name, info.num_classes)
    if output is not None and get_spec(name).family == "msgc":
        raise BadInputError(
            f"{name}: its deploy form (per-sample gates as standard ops) has no checkpoint layout to load back; "
            "drop -o, and give the train-form checkpoint to `edgerep export`, which deploys it on the fly"
        )
    pre = ck.preprocess(name)
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
        references=ck.references(),
        latency=latency,
        generic=generic,
    )
    out = None
    if output is not None:
        extra = {k: v for k, v in ck.meta.items() if k in _CARRIED_META}
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
        writable_file(output, example="deploy.pt2")
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
    info = LoadInfo(Path(path), sha256_path(Path(path)), "pt2", "train", classes, name)
    out = None
    if output is not None:
        out = Path(output)
        with atomic_path(out) as tmp:
            torch.export.save(export_program(deployed, example), str(tmp))
    return DeployResult(deployed, report, info, out, example)


# What a deploy checkpoint keeps from its train-form source: what export and eval need later.
_CARRIED_META = ("input_size", "mean", "std", "labels", "crop_pct", "interpolation")


def _sample_images(folder: str | Path, pre: Preprocess, n: int) -> tuple[Tensor, str]:
    """``n`` photos spread evenly over the folder (so every class is likely represented)."""
    items = list_images(folder)
    files = [items.files[i] for i in evenly_spaced(len(items.files), n)]
    return load_images(files, pre).images, f"{len(files)} photos from {Path(folder).name}/"


def _check_output(path: Path, source: Path) -> None:
    """The deploy checkpoint goes to a new file: never over its own source, never into a missing folder."""
    writable_file(path, example="deploy.pt")
    if path.exists() and path.resolve() == source.resolve():
        raise BadInputError(
            f"-o {path} is the checkpoint being deployed; writing the deploy form there would replace the"
            " training checkpoint: choose another file name, e.g. -o deploy.pt"
        )


def export_checkpoint(
    name: str | None,
    checkpoint: str | Path,
    *,
    plan: list[tuple[str, str]],
    output_dir: str | Path,
    calibration: str | Path | None = None,
    validation: str | Path | None = None,
    checkpoint_layout: str | None = None,
    input_layout: str | None = None,
    options: dict | None = None,
    tolerance: dict | None = None,
    progress=None,
    overrides: dict | None = None,
) -> tuple[list[tuple[str, str, ExportResult | EdgerepError]], LoadInfo]:
    """Load a checkpoint (train form is deployed and verified first), export every (target, precision) of ``plan``.

    Every (target, precision, option, input layout) is checked against its target file before any slow work, and
    the photos are decoded once for all of them. A failed validation or a layer the target cannot convert is
    returned in its row (the other artifacts are still built); other bad input raises.
    """
    from .backends.base import UnsupportedLayerError
    from .export.pipeline import export
    from .export.targets import get_target

    precisions = []
    for t, p in plan:
        tgt = get_target(t)
        precisions.append(tgt.precision(p))
        tgt.resolve_options(options)
        tgt.resolve_layout(input_layout)
    if is_program(checkpoint):
        if progress:
            progress(f"re-parameterizing the program {checkpoint} (generic pass) and verifying it")
        result = deploy_program(checkpoint, latency=False)
        model, info, pre, labels = result.model, result.source, program_preprocess(result.model_input), None
        name = info.model
    else:
        ck = Checkpoint.open(checkpoint, overrides)
        name = ck.model_name(name)
        model, info = ck.load(name, layout=checkpoint_layout)
        check_geometry(model, ck, name, info.num_classes)
        pre = ck.preprocess(name)
        if info.form == "train":
            if progress:
                progress(f"fusing {name} (train-form checkpoint) and verifying the deploy form")
            model, _ = deploy(model, name=name, input_size=(3, *pre.size), latency=False)
        labels = ck.labels
    calib, val = _decode_photos(calibration, validation, pre, precisions, bars=progress is not None)
    rows = []
    with removed_if_empty(output_dir):  # a run that kept nothing leaves no empty folder behind
        for t, p in plan:
            if progress:
                progress(f"exporting {name} -> {t} {p}")
            try:
                result = export(
                    model, name=name, target=t, precision=p, input_size=(3, *pre.size), output_dir=output_dir,
                    preprocess=pre, calibration=calib, validation=val, labels=labels, source=info,
                    options=options, input_layout=input_layout, tolerance=tolerance, progress=progress,
                )
            except (VerificationError, UnsupportedLayerError) as exc:  # the other targets may still work
                result = exc
            except KeyboardInterrupt:  # the artifacts finished before Ctrl-C are complete and validated: say so
                raise Interrupted([str(r.artifact) for _, _, r in rows if not isinstance(r, EdgerepError)]) from None
            rows.append((t, p, result))
    return rows, info


def _decode_photos(
    calibration, validation, pre: Preprocess, precisions: list, bars: bool = False
) -> tuple[Batch | None, Batch | None]:
    """Calibration and validation photos decoded once for every artifact (the same folder only once).

    Calibration is needed only by quantized precisions; past the largest per-target maximum it is subsampled
    evenly before decoding. ``.npz`` files are read as they are.
    """
    def decode(source, limit: int, what: str) -> tuple[Batch, bool]:
        """The photos (at most ``limit``, 0 = all) and whether that is all of them."""
        bar = progress_bar(what) if bars else None
        if Path(source).suffix.lower() == ".npz":
            return load_images(source, pre, progress=bar), True
        items = list_images(source)
        keep = evenly_spaced(len(items.files), limit)
        labels = None if items.labels is None else [items.labels[i] for i in keep]
        batch = load_images(ImageList([items.files[i] for i in keep], labels, items.classes), pre, progress=bar)
        return batch, len(keep) == len(items.files)

    quantized = [p for p in precisions if p.calibration]
    calib, complete = None, False
    if calibration is not None and quantized:
        limits = [p.max_calibration_images for p in quantized]
        calib, complete = decode(calibration, 0 if 0 in limits else max(limits), "calibration images")
    if validation is None:
        return calib, None
    if complete and validation == calibration:
        return calib, calib
    return calib, decode(validation, 0, "validation images")[0]
