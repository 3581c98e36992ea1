"""Structural re-parameterization: fusion math, blocks, and model-level conversion.

``reparameterize`` asks each known block for its deploy form; ``reparameterize_generic`` finds the same
merges in a traced graph of any model, knowing no block class.
"""

from .convert import count_blocks, reparameterize
from .convert_convs import convert_convs
from .generic import generic_pass, reparameterize_generic

__all__ = ["convert_convs", "count_blocks", "generic_pass", "reparameterize", "reparameterize_generic"]
