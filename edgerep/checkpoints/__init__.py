"""Checkpoints: safe reading, layouts of other projects (by structure), edgerep's own format."""

from .io import load_state_dict, read_checkpoint
from .layouts import detect_form, detect_layout
from .load import LoadInfo, load_model, save_checkpoint

__all__ = [
    "LoadInfo",
    "detect_form",
    "detect_layout",
    "load_model",
    "load_state_dict",
    "read_checkpoint",
    "save_checkpoint",
]
