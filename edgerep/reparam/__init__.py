"""Structural re-parameterization: fusion math, blocks, and model-level conversion."""

from .convert import count_blocks, reparameterize

__all__ = ["count_blocks", "reparameterize"]
