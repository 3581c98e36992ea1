"""Where the embedded default lives: a small trained model and a few real images shipped in the package.

They let ``edgerep deploy`` (and export/eval) run with no arguments on a fresh machine; ``edgerep.resources`` finds
them in a checkout and in an installed wheel alike.
"""

from __future__ import annotations

import json
from pathlib import Path

from .images import Preprocess
from .resources import shipped_file

DEFAULT_MODEL = "repghostnet_050"
_MODEL_FILE = f"models/{DEFAULT_MODEL}_cifar10.pt"
_RECIPE_FILE = f"models/{DEFAULT_MODEL}_cifar10.json"
_IMAGES_DIR = "cifar10/test"


def default_model_name() -> str:
    """The zoo name of the shipped model (its checkpoint is in the train form)."""
    return DEFAULT_MODEL


def default_model_path() -> Path:
    """The shipped train-form checkpoint (fp16 values, edgerep checkpoint layout, CIFAR-10 labels)."""
    return shipped_file(_MODEL_FILE)


def default_recipe_path() -> Path:
    """The JSON beside the checkpoint: how it was trained and the top-1 it reached."""
    return shipped_file(_RECIPE_FILE)


def default_images_dir() -> Path:
    """200 CIFAR-10 test images, one subfolder per class (label order = sorted folder names)."""
    return shipped_file(_IMAGES_DIR)


def default_recipe() -> dict:
    """The recipe JSON as a dict (labels, preprocessing, top-1, training settings)."""
    return json.loads(default_recipe_path().read_text())


def default_preprocess() -> Preprocess:
    """The preprocessing the shipped model was trained and measured with."""
    return Preprocess.from_dict(default_recipe()["preprocess"])


