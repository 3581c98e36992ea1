"""Architectures only: timm-style named models in their training form.

Importing the package imports every architecture module, whose ``@register_model`` fills the registry; the registry
itself imports none of them (no import cycle).
"""

from . import mobilenetv2, mobileone, msgc, repghostnet, repvgg, resnet  # noqa: F401  (they register their models)
from .registry import ModelSpec, create_model, get_spec, list_models, register_model

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register_model"]
