"""edgerep: re-parameterized CNNs from training checkpoint to verified phone artifact."""

__version__ = "0.1.0"

from .api import deploy, deploy_checkpoint, load_model  # noqa: E402

__all__ = ["__version__", "deploy", "deploy_checkpoint", "load_model"]
