"""edgerep: re-parameterized CNNs from training checkpoint to verified phone artifact."""

from ._version import __version__
from .api import deploy, deploy_checkpoint, load_model

__all__ = ["__version__", "deploy", "deploy_checkpoint", "load_model"]
