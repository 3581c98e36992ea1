"""The version, in a leaf module: the package, its checkpoints and the CLI read it without import cycles."""

__version__ = "0.1.0"
