"""Structural re-parameterization: fusion math, blocks, and model-level conversion."""

from .convert import count_blocks, reparameterize
from .convert_convs import convert_convs

__all__ = ["convert_convs", "count_blocks", "reparameterize"]
