"""edgerep: re-parameterized CNNs from training checkpoint to verified phone artifact."""

__version__ = "0.1.0"
