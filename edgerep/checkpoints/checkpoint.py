"""A checkpoint file read once: its contents, its hash, and what its meta says about the model it holds.

Every command starts here. The file's bytes are read once, hashed and unpickled (weights only) from memory, so the
hash in a manifest is the hash of exactly what was loaded. The model's geometry — input size, normalisation, crop,
interpolation, labels — comes from, in rising priority: the zoo's defaults, a timm-style ``config.json`` beside the
checkpoint (its ``pretrained_cfg``), the meta an edgerep checkpoint carries, and the user's flags (``overrides``).
It is validated here, once, with errors that name the source and the key.
"""

from __future__ import annotations

import hashlib
import math
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import BadInputError, CheckpointError
from ..images import Preprocess
from ..zoo import get_spec
from .io import extract_state_dict, load_bytes

if TYPE_CHECKING:
    from .load import LoadInfo

__all__ = ["Checkpoint", "check_geometry", "load_state_dict", "preprocess_of"]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    obj: dict
    sha256: str
    overrides: dict = field(default_factory=dict)  # the user's geometry flags, over everything the file says

    @classmethod
    def open(cls, path: str | Path, overrides: dict | None = None) -> Checkpoint:
        p = Path(path)
        if not p.exists():
            raise CheckpointError(f"checkpoint {p} does not exist; check the path")
        if p.is_dir():
            raise CheckpointError(f"checkpoint {p} is a directory; pass the .pt/.pth file inside it")
        try:
            data = p.read_bytes()
        except OSError as exc:
            why = exc.strerror or exc
            raise CheckpointError(f"cannot read checkpoint {p} ({why}); check its permissions") from None
        return cls(p, load_bytes(data, p), hashlib.sha256(data).hexdigest(), dict(overrides or {}))

    @property
    def meta(self) -> dict:
        """Geometry and labels: config.json beside the file, then the checkpoint's own meta, then the overrides."""
        meta = self.obj.get("meta")
        return {**_config_json(self.path), **(meta if isinstance(meta, dict) else {}), **self.overrides}

    def model_name(self, given: str | None = None) -> str:
        """The zoo name: the user's, else the one an edgerep checkpoint records; other layouts need the user's."""
        if given:
            return given
        name = self.meta.get("model")
        if isinstance(name, str) and name:
            return name
        raise BadInputError(
            f"checkpoint {self.path} does not record its model; name it: edgerep deploy MODEL --checkpoint {self.path}"
            " (see `edgerep models`)"
        )

    def load(self, name: str, *, layout: str | None = None, form: str | None = None) -> tuple[nn.Module, LoadInfo]:
        """The zoo model ``name`` with these weights (see ``checkpoints.load.load_model``)."""
        from .load import load_model

        return load_model(name, self, layout=layout, form=form)

    def preprocess(self, name: str) -> Preprocess:
        return preprocess_of(name, self.meta, where=str(self.path))

    @property
    def labels(self) -> list[str] | None:
        labels = self.meta.get("labels")
        if labels is None:
            return None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise BadInputError(
                f"checkpoint {self.path}: meta 'labels' must be a list of class names (strings), got {labels!r:.80};"
                " re-save it with labels=[...] or drop the key"
            )
        return labels

    def references(self) -> list[tuple[str, Tensor, Tensor]]:
        """Reference outputs stored beside the weights (``input`` + ``output_train`` / ``output_deploy``), as the
        fixtures of other projects carry them: each becomes a check of the deploy form."""
        x = self.obj.get("input")
        if not isinstance(x, Tensor):
            return []
        pairs = (("output_train", "source train output"), ("output_deploy", "source deploy output"))
        found = [(key, label) for key, label in pairs if isinstance(self.obj.get(key), Tensor)]
        return [(label, x.float(), self.obj[key].float()) for key, label in found]


def check_geometry(model: nn.Module, ck: Checkpoint, name: str, num_classes: int) -> None:
    """The labels fit the classifier, and the model takes the input size it is given (before any slow work)."""
    labels = ck.labels
    if labels is not None and len(labels) != num_classes:
        raise BadInputError(
            f"{len(labels)} labels for {name}, whose classifier has {num_classes} outputs; give one name per output"
        )
    pre = ck.preprocess(name)
    if "input_size" not in ck.overrides:
        return
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *pre.size))
    except RuntimeError as exc:
        why = str(exc).strip().splitlines()[0][:160]
        raise BadInputError(
            f"{name} cannot take a {pre.size[0]}x{pre.size[1]} input ({why}); choose another --input-size"
        ) from None


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict inside a checkpoint file (unwrapping common nesting; see ``io.extract_state_dict``)."""
    return extract_state_dict(Checkpoint.open(path).obj, path)


def preprocess_of(name: str, meta: dict | None = None, where: str = "checkpoint") -> Preprocess:
    """Input geometry and normalisation: the checkpoint's own record first, else the zoo's defaults."""
    spec = get_spec(name)
    meta = meta or {}
    input_size = _ints(meta.get("input_size", spec.input_size), "input_size", where)
    if len(input_size) != 3 or input_size[0] != 3:
        raise BadInputError(f"{where}: meta 'input_size' must be [3, H, W], got {input_size!r}")
    mean = _floats(meta.get("mean", spec.mean), "mean", where)
    std = _floats(meta.get("std", spec.std), "std", where)
    crop_pct = meta.get("crop_pct", 0.875 if min(input_size[1:]) >= 128 else 1.0)
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise BadInputError(f"{where}: meta 'crop_pct' must be a number in (0, 1], got {crop_pct!r}")
    interpolation = meta.get("interpolation", "bilinear")
    try:
        return Preprocess.for_input(input_size, mean, std, float(crop_pct), str(interpolation))
    except BadInputError as exc:
        raise BadInputError(f"{where}: {exc}") from None


def _ints(value: object, key: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                       for v in value):
        raise BadInputError(f"{where}: meta '{key}' must be a list of positive integers, got {value!r:.80}")
    return tuple(value)


def _floats(value: object, key: str, where: str) -> tuple[float, ...]:
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not ok:
        raise BadInputError(f"{where}: meta '{key}' must be a list of 3 numbers, got {value!r:.80}")
    return tuple(float(v) for v in value)


# timm's pretrained_cfg names -> edgerep's meta names (what preprocess_of and Checkpoint.labels read)
_CONFIG_KEYS = {"input_size": "input_size", "mean": "mean", "std": "std", "crop_pct": "crop_pct",
                "interpolation": "interpolation", "label_names": "labels"}


def _config_json(path: Path) -> dict:
    """The geometry a timm-style ``config.json`` beside the checkpoint records (``{}`` when there is none)."""
    config = path.parent / "config.json"
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read {config} ({exc}); fix it or move it away from the checkpoint") from None
    cfg = data.get("pretrained_cfg", data) if isinstance(data, dict) else {}
    if not isinstance(cfg, dict):
        raise BadInputError(f"{config}: 'pretrained_cfg' must be an object; fix it or move it away")
    return {ours: cfg[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in cfg}

