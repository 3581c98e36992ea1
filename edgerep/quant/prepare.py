"""The model-level half of edgerep's int8 path: transforms applied to the PyTorch deploy model before a
backend quantizes it, driven by the target's options (see targets/onnx.toml, targets/tflite.toml).

    model, record = prepare(deployed, calibration_images, equalize=True, bias_correction=True, keep_fp="last")

``record`` goes into the artifact's manifest (``quantization.transforms``) so it says what was done.
"""

from __future__ import annotations

from torch import Tensor, nn

from .bias_correction import correct_bias
from .equalize import equalize as equalize_model
from .equalize import fold_batchnorms
from .graph import NotTraceable, resolve_layers


def prepare(
    model: nn.Module,
    images: Tensor,
    *,
    equalize: bool = False,
    bias_correction: bool = False,
    keep_fp: str | list[str] | None = None,
    weight_bits: int = 8,
) -> tuple[nn.Module, dict]:
    """``model`` (a new copy when anything changes) ready for int8, and a record of what was done.

    ``keep_fp`` layers (module names, or "first" / "last") are resolved here so a misspelt name fails
    before any export; the backend keeps them in float. ``weight_bits`` is what the backend rounds
    weights to (7 for ONNX ``reduce_range``), so bias correction removes the error that really occurs.
    """
    model = model.eval()
    keep = resolve_layers(model, keep_fp, images[:1].float())
    record: dict = {"keep_fp": keep}
    try:
        if equalize:
            model, record["equalized_pairs"] = equalize_model(model)
        elif keep:  # a BatchNorm the exporter folds renames the conv's weight, by which backends find the layer
            model, _ = fold_batchnorms(model)
    except NotTraceable as exc:
        record["equalized_pairs"] = 0
        record["equalize_skipped"] = f"torch.fx cannot trace the model ({exc})"
    if bias_correction:
        model, layers = correct_bias(model, images, bits=weight_bits, skip=tuple(keep))
        record["bias_corrected_layers"] = layers
    return model, record
