"""Load a zoo model from a checkpoint of any known layout and form; save edgerep's own checkpoints.

edgerep checkpoint file (``save_checkpoint``), a ``torch.save`` of a plain dict readable with
``torch.load(path, weights_only=True)``::

    {"format": "edgerep.checkpoint",     # layouts.EDGEREP_FORMAT
     "version": 1,
     "meta": {"model": "repvgg_a0",      # zoo name
              "form": "train" | "deploy",
              "num_classes": 1000,
              "layout": "timm",          # key naming of state_dict
              "edgerep": "0.1.0",        # writer version
              ...},                      # caller's extra entries (str/int/float/bool/None, or flat lists of them)
     "state_dict": {timm-named tensors}}

No timestamp is stored: the same weights give the same bytes, hence the same sha256.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import torch
from torch import Size, Tensor, nn

from .._version import __version__
from ..errors import BadInputError, CheckpointError
from ..fileio import atomic_path
from ..reparam import count_blocks, reparameterize
from ..zoo import create_model, get_spec, list_models
from .checkpoint import Checkpoint
from .io import extract_state_dict
from .layouts import EDGEREP_FORMAT, detect_layout, form_evidence, get_layout

__all__ = ["LoadInfo", "load_model", "save_checkpoint"]

FORMS = ("train", "deploy")
FORMAT_VERSION = 1
_SHOWN = 3  # keys named per kind of mismatch; the rest are counted


@dataclass(frozen=True)
class LoadInfo:
    """Where the weights came from and how they were read (for reports and reproducibility)."""

    path: Path | None
    sha256: str | None
    layout: str
    form: str
    num_classes: int
    model: str


def load_model(
    name: str,
    checkpoint: str | Path | dict | Checkpoint,
    *,
    layout: str | None = None,
    form: str | None = None,
    where: str | None = None,
) -> tuple[nn.Module, LoadInfo]:
    """The zoo model ``name`` with the checkpoint's weights, in eval mode and in the checkpoint's form.

    ``layout`` and ``form`` are detected from the keys when omitted; when given they must agree with
    what is detected (an edgerep file may also be read as ``timm``: same names). A deploy-form
    checkpoint is loaded into ``reparameterize(create_model(name))``. ``num_classes`` comes from the
    classifier's shape. Every failure is a one-line ``CheckpointError`` that says how to fix it;
    ``where`` names the source in those messages when ``checkpoint`` is an already-read dict.
    """
    spec = get_spec(name)
    if form is not None and form not in FORMS:
        raise BadInputError(f"unknown form {form!r}; use one of: {', '.join(FORMS)} (or omit it to auto-detect)")
    if not isinstance(checkpoint, (dict, Checkpoint)):
        checkpoint = Checkpoint.open(checkpoint)
    obj, path, sha = (checkpoint, None, None) if isinstance(checkpoint, dict) else (
        checkpoint.obj, checkpoint.path, checkpoint.sha256)
    where = where or (str(path) if path is not None else "<dict>")

    sd = extract_state_dict(obj, where)  # first, so that a file without weights is named in the error
    _refuse_non_finite(sd, where)
    found = detect_layout(obj, spec.family)
    chosen = _choose_layout(layout, found, sd, where, spec.family)
    renamed, origin = get_layout(chosen, spec.family).rename(sd)
    meta = obj["meta"] if chosen == "edgerep" else None
    if meta is not None and meta.get("model") not in (None, name):
        raise CheckpointError(
            f"checkpoint {where} was saved from {meta['model']}, not {name}; pass {meta['model']} as the model name"
        )

    forms = _candidate_forms(renamed, origin, meta, form, where)
    num_classes = _num_classes(name, renamed)
    # The first form that fits wins; several are tried only when the keys carry no form marker.
    first_miss: tuple[str, dict[str, Size], _Problems] | None = None
    for found_form in forms:
        model = _build(name, num_classes, found_form)
        expected = _state_shapes(model)
        problems = _mismatch(expected, renamed)
        if problems is None:
            break
        first_miss = first_miss or (found_form, expected, problems)
    else:
        miss_form, expected, problems = first_miss
        for other in FORMS:  # a form asked for that contradicts the weights
            if other not in forms and not _mismatch(_state_shapes(_build(name, num_classes, other)), renamed):
                raise _form_error(where, other, f"its keys fit the {other}-form {name}")
        raise CheckpointError(
            _describe(where, name, chosen, miss_form, problems, expected, origin, renamed, num_classes)
        )
    said = meta.get("form") if meta is not None else None
    if said is not None and said != found_form:  # the weights are the truth; deploy and export both say so
        warnings.warn(
            f"checkpoint {where}: its meta says form {said!r} but its weights are the {found_form} form; loaded as"
            f" {found_form} (re-save the file to correct its meta)",
            stacklevel=2,
        )
    full = model.state_dict()
    full.update(renamed)  # keeps the model's own num_batches_tracked when the checkpoint has none
    model.load_state_dict(full)
    return model.eval(), LoadInfo(path, sha, chosen, found_form, num_classes, name)


def save_checkpoint(
    path: str | Path,
    module: nn.Module,
    *,
    model: str,
    form: str | None = None,
    num_classes: int | None = None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write ``module`` (the zoo model ``model``) as an edgerep checkpoint, atomically.

    The format is in the module docstring. The file appears complete or not at all: it is written to
    a temporary file in the same folder, synced, then ``os.replace``-d over ``path``. ``form``
    defaults to ``deploy`` when no re-param block is left; ``num_classes`` to the last
    ``nn.Linear``'s output size.
    """
    get_spec(model)
    form = form if form is not None else ("train" if count_blocks(module) else "deploy")
    if form not in FORMS:
        raise BadInputError(f"unknown form {form!r}; use one of: {', '.join(FORMS)}")
    meta: dict[str, object] = {
        "model": model,
        "form": form,
        "num_classes": num_classes if num_classes is not None else _classifier_out(module),
        "layout": "timm",
        "edgerep": __version__,
    }
    for key, value in (extra or {}).items():
        if not _plain(value):
            raise TypeError(f"meta entry {key!r} must be str/int/float/bool/None or a list of them, got {value!r}")
        meta[key] = list(value) if isinstance(value, tuple) else value
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    path = Path(path)
    _write_atomically(path, {"format": EDGEREP_FORMAT, "version": FORMAT_VERSION, "meta": meta, "state_dict": state})
    return path


def _plain(value: object) -> bool:
    """What the weights-only loader reads back without allow-listing: primitives and flat lists of them."""
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, (list, tuple)) and all(isinstance(v, scalar) for v in value))


def _choose_layout(asked: str | None, found: str, sd: Mapping[str, Tensor], where: str, family: str) -> str:
    if asked is None:
        return found
    get_layout(asked, family)  # unknown / not for this family: its own error
    if asked == found or (asked == "timm" and found == "edgerep"):
        return asked
    if asked == "edgerep":
        raise CheckpointError(
            f"checkpoint {where} is not an edgerep file (no {EDGEREP_FORMAT!r} meta); its keys are in the"
            f" {found} layout: pass --checkpoint-layout {found} or omit it"
        )
    clue = get_layout(found, family).evidence(list(sd)) or next(iter(sd), "")
    raise CheckpointError(
        f"checkpoint {where} is in the {found} layout (keys like {clue}), not {asked}; pass --checkpoint-layout {found}"
        " or omit --checkpoint-layout to auto-detect"
    )


def _candidate_forms(
    renamed: dict[str, Tensor], origin: dict[str, str], meta: dict | None, asked: str | None, where: str
) -> list[str]:
    """The forms to try, best guess first; raises when the asked form contradicts the checkpoint's keys.

    The keys decide; an edgerep meta's ``form`` is only the first guess when they carry no marker (a wrong meta,
    e.g. edited by hand, must not make ``deploy`` say "use export" while ``export`` says "run deploy").
    """
    found, key = form_evidence(list(renamed))
    kind = "training-branch" if found == "train" else "fused"
    why = f"has {kind} keys such as {origin.get(key, key)}"
    if found == "mixed":
        raise CheckpointError(
            f"checkpoint {where} is half converted ({why} and training-branch keys too);"
            " convert the whole train-form checkpoint again"
        )
    if asked is not None and found is not None and asked != found:
        raise _form_error(where, found, why)
    if asked is not None:
        return [asked]
    if found is not None:
        return [found]
    hint = meta.get("form") if meta is not None else None
    return sorted(FORMS, key=lambda f: f != hint)


def _form_error(where: str, found: str, why: str) -> CheckpointError:
    if found == "deploy":
        return CheckpointError(
            f"checkpoint {where} is in deploy form ({why}): it is already fused and needs no `edgerep deploy`;"
            " use it as is (e.g. with `edgerep export`, or load_model(..., form='deploy'))"
        )
    return CheckpointError(
        f"checkpoint {where} is in train form ({why}): it is not fused yet; run `edgerep deploy` on it first"
        " (or load_model(..., form='train'))"
    )


def _refuse_non_finite(sd: Mapping[str, Tensor], where: str) -> None:
    """A NaN/Inf weight (a diverged run, a damaged file) is named here, not reported later as a fusion mismatch."""
    for key, t in sd.items():
        if isinstance(t, Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"checkpoint {where}: tensor {key} holds {bad} NaN/Inf value(s) of {t.numel()}; the training run"
                " diverged or the file is damaged: use an earlier or intact checkpoint"
            )


def _skeleton(name: str, num_classes: int | None = None, form: str = "train") -> nn.Module:
    """The model on the meta device (shapes only: no memory, fast); on the CPU if it cannot be built there."""
    try:
        with torch.device("meta"):
            return _build(name, num_classes, form)
    except (RuntimeError, NotImplementedError):  # a factory that computes with real values
        return _build(name, num_classes, form)


def _build(name: str, num_classes: int | None, form: str) -> nn.Module:
    model = create_model(name, num_classes=num_classes).eval()
    return reparameterize(model, inplace=True) if form == "deploy" else model


@lru_cache(maxsize=None)
def _classifier_key(name: str) -> str | None:
    """The weight key of the model's last ``nn.Linear``: its classifier."""
    last = None
    for mod_name, mod in _skeleton(name).named_modules():
        if isinstance(mod, nn.Linear):
            last = mod_name
    return None if last is None else f"{last}.weight"


def _num_classes(name: str, sd: Mapping[str, Tensor]) -> int:
    key = _classifier_key(name)
    if key is not None and key in sd and sd[key].ndim >= 1:
        return int(sd[key].shape[0])
    return get_spec(name).num_classes


@lru_cache(maxsize=None)
def _expected_shapes(name: str, num_classes: int, form: str) -> dict[str, Size]:
    """Key -> shape of another zoo model's state dict in ``form`` (for "did you mean" suggestions)."""
    return _state_shapes(_skeleton(name, num_classes, form))


def _state_shapes(model: nn.Module) -> dict[str, Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class _Problems:
    missing: list[str]
    unexpected: list[str]
    shapes: list[str]


def _mismatch(expected: Mapping[str, Size], sd: Mapping[str, Tensor]) -> _Problems | None:
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    shapes = [k for k in sd if k in expected and sd[k].shape != expected[k]]
    return _Problems(missing, unexpected, shapes) if missing or unexpected or shapes else None


def _describe(
    where: str, name: str, layout: str, form: str, p: _Problems, expected: Mapping[str, Size],
    origin: dict[str, str], sd: Mapping[str, Tensor], num_classes: int,
) -> str:
    parts = []
    if p.missing:
        parts.append(f"{len(p.missing)} missing ({_few(p.missing)})")
    if p.unexpected:
        parts.append(f"{len(p.unexpected)} unexpected ({_few([origin.get(k, k) for k in p.unexpected])})")
    if p.shapes:
        shown = [f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k])}" for k in p.shapes]
        parts.append(f"{len(p.shapes)} with another shape ({_few(shown)})")
    fits = _models_that_fit(name, num_classes, form, sd)
    fix = (
        f"did you mean {' or '.join(fits)}?"
        if fits
        else "check the model name (`edgerep models`) and --checkpoint-layout, or re-save the checkpoint from this model"
    )
    return f"checkpoint {where} ({layout} layout, {form} form) does not fit {name}: {'; '.join(parts)}; {fix}"


def _models_that_fit(name: str, num_classes: int, form: str, sd: Mapping[str, Tensor]) -> list[str]:
    family = get_spec(name).family
    return [
        other
        for other in list_models(family)
        if other != name and not _mismatch(_expected_shapes(other, num_classes, form), sd)
    ]


def _few(items: list[str]) -> str:
    more = f", ... +{len(items) - _SHOWN}" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _classifier_out(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BadInputError("cannot tell the number of classes (the model has no nn.Linear); pass num_classes=")
    return linears[-1].out_features


def _write_atomically(path: Path, obj: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            torch.save(obj, f)  # a file object, not a name: the archive's inner folder name stays fixed
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint {path} ({exc.strerror or exc}); check the folder and free space"
        ) from None
