"""int8 without the re-param accuracy collapse: model transforms before a backend quantizes, calibration
choices per backend, and a per-layer sensitivity table.

- ``prepare``: cross-layer equalization, bias correction, AdaRound, layers kept in float (by name or by a
  sensitivity budget), each judged on held-out calibration images (``prepare.py``)
- ``simulate``: int8 simulated in PyTorch, the score the choices are made on; ``adaround``: rounding by reconstruction
- ``equalize`` / ``fold_batchnorms`` (``equalize.py``), ``correct_bias`` (``bias_correction.py``)
- ``calibration``: method names and what onnxruntime / PT2E run for each
- ``sensitivity``: quantize one layer at a time (or all but one), rank the layers by the damage
"""

from .adaround import adaround
from .bias_correction import correct_bias
from .equalize import equalize, fold_batchnorms
from .prepare import check_calibration, from_options, prepare

__all__ = ["adaround", "correct_bias", "check_calibration", "equalize", "fold_batchnorms", "from_options", "prepare"]
