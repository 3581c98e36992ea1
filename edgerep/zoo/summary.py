"""Sizes of every zoo model in train and deploy form, computed on the meta device (no weights allocated)."""

from __future__ import annotations

import torch

from ..errors import BadInputError
from ..proof.metrics import count_macs, count_params
from ..reparam import count_blocks, reparameterize
from . import get_spec, list_models


def summarize_model(name: str) -> dict:
    """One row of ``edgerep models``: what fusing saves (parameters, MACs) and how many blocks it fuses."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = spec.factory(num_classes=spec.num_classes).eval()
        deployed = reparameterize(model)
    blocks = count_blocks(model)
    return {
        "name": name,
        "family": spec.family,
        "input_size": list(spec.input_size),
        "params_train": count_params(model),
        "params_deploy": count_params(deployed),
        "macs_train": count_macs(model, spec.input_size),
        "macs_deploy": count_macs(deployed, spec.input_size),
        "blocks": sum(blocks.values()),
    }


def summarize_zoo(family: str | None = None) -> list[dict]:
    names = list_models(family)
    if family and not names:
        families = sorted({get_spec(n).family for n in list_models()})
        raise BadInputError(f"no models in family {family!r}; families: {', '.join(families)}")
    return [summarize_model(n) for n in names]
