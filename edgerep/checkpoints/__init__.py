"""Checkpoints: safe reading, layouts of other projects (by structure), edgerep's own format."""

from .checkpoint import Checkpoint, check_geometry, load_state_dict, preprocess_of
from .layouts import detect_form, detect_layout
from .load import LoadInfo, load_model, save_checkpoint

__all__ = [
    "Checkpoint",
    "check_geometry",
    "LoadInfo",
    "detect_form",
    "detect_layout",
    "load_model",
    "load_state_dict",
    "preprocess_of",
    "save_checkpoint",
]
