"""Model registry: timm-style names mapped to factories plus the metadata deployment needs."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..errors import BadInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What edgerep knows about a zoo model besides its code: input geometry and preprocessing."""

    name: str
    factory: Callable[..., nn.Module]
    family: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(family: str, **meta) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory under its function name: ``@register_model("repvgg")``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        _REGISTRY[fn.__name__] = ModelSpec(name=fn.__name__, factory=fn, family=family, **meta)
        return fn

    return wrap


def get_spec(name: str) -> ModelSpec:
    """The registered model ``name``; an unknown name is a user error that suggests the closest names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise BadInputError(
            f"unknown model {name!r}; {hint}run `edgerep models` to list the {len(_REGISTRY)} known models"
        ) from None


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a zoo model in its training form (eval mode is the caller's choice)."""
    spec = get_spec(name)
    return spec.factory(num_classes=spec.num_classes if num_classes is None else num_classes, **kwargs)


def list_models(family: str | None = None) -> list[str]:
    """Sorted names of every registered model, or of one ``family``."""
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)
