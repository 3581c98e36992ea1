"""Where the embedded default lives: a small trained model and a few real images shipped in the package.

They let ``edgerep deploy`` (and export/eval) run with no arguments on a fresh machine. Paths are
found with ``importlib.resources`` so they work from an installed wheel as well as from a checkout.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .errors import BadInputError
from .images import Preprocess

DEFAULT_MODEL = "repghostnet_050"
_MODEL_FILE = f"models/{DEFAULT_MODEL}_cifar10.pt"
_RECIPE_FILE = f"models/{DEFAULT_MODEL}_cifar10.json"
_IMAGES_DIR = "cifar10/test"


def default_model_name() -> str:
    """The zoo name of the shipped model (its checkpoint is in the train form)."""
    return DEFAULT_MODEL


def default_model_path() -> Path:
    """The shipped train-form checkpoint (fp16 values, edgerep checkpoint layout, CIFAR-10 labels)."""
    return _data_file(_MODEL_FILE)


def default_recipe_path() -> Path:
    """The JSON beside the checkpoint: how it was trained and the top-1 it reached."""
    return _data_file(_RECIPE_FILE)


def default_images_dir() -> Path:
    """200 CIFAR-10 test images, one subfolder per class (label order = sorted folder names)."""
    return _data_file(_IMAGES_DIR)


def default_recipe() -> dict:
    """The recipe JSON as a dict (labels, preprocessing, top-1, training settings)."""
    return json.loads(default_recipe_path().read_text())


def default_preprocess() -> Preprocess:
    """The preprocessing the shipped model was trained and measured with."""
    return Preprocess.from_dict(default_recipe()["preprocess"])


def _data_file(rel: str) -> Path:
    """``edgerep/data/<rel>`` from the installed package, else from the source tree next to this file."""
    candidates = []
    try:
        root = resources.files("edgerep").joinpath("data")
        # A zipped install has no real path; the source-tree fallback covers every other case.
        if isinstance(root, Path):
            candidates.append(root / rel)
    except (ModuleNotFoundError, TypeError):
        pass
    candidates.append(Path(__file__).resolve().parent / "data" / rel)
    for path in candidates:
        if path.exists():
            return path
    raise BadInputError(
        f"edgerep's shipped data file data/{rel} is missing (looked in {', '.join(map(str, candidates))});"
        " reinstall edgerep, or pass the model/images explicitly"
    )
