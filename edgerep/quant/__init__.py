"""int8 without the re-param accuracy collapse: model transforms before a backend quantizes, calibration
choices per backend, and a per-layer sensitivity table.

- ``prepare``: cross-layer equalization, bias correction, layers kept in float (``prepare.py``)
- ``equalize`` / ``fold_batchnorms`` (``equalize.py``), ``correct_bias`` (``bias_correction.py``)
- ``calibration``: method names and what onnxruntime / PT2E run for each
- ``sensitivity``: quantize one layer at a time (or all but one), rank the layers by the damage
"""

from .bias_correction import correct_bias
from .equalize import equalize, fold_batchnorms
from .prepare import prepare

__all__ = ["correct_bias", "equalize", "fold_batchnorms", "prepare"]
