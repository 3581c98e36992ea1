"""Activation calibration: the method names edgerep accepts and what each backend runs for them.

- onnx (onnxruntime ``CalibrationMethod``): ``minmax`` (observed range), ``percentile`` (99.999 % of
  |x|), ``entropy`` (KL divergence of the int8 histogram, TensorRT's method).
- tflite (torchao PT2E observers): ``mse`` (``HistogramObserver``: the clipping range with least L2
  rounding + clipping error, what litert-torch uses by default), ``minmax`` (``MinMaxObserver``),
  ``percentile`` (the histogram's 0.001 % / 99.999 % quantiles, below).
- coreml (edgerep's MIL evaluator): ``minmax``, ``percentile`` (onnxruntime's rule on a histogram of |x|:
  ``percentile_bound``).
Each target file lists the ones its backend offers (``targets/*.toml``, option ``calibration``).
"""

from __future__ import annotations

import dataclasses

import torch

ONNX_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
TFLITE_METHODS = ("mse", "minmax", "percentile")
PERCENTILE = 99.999  # onnxruntime's default, used for every backend so "percentile" means one thing
HISTOGRAM_BINS = 2048  # onnxruntime's for Percentile


def percentile_bound(histogram: torch.Tensor, top: float) -> float:
    """The |x| that ``PERCENTILE`` % of the values do not exceed, from a histogram of |x| over [0, ``top``].

    onnxruntime's symmetric Percentile rule (the bin where the cumulative share reaches the percentile), taking
    that bin's upper edge: a range never cuts into the bin that holds the percentile.
    """
    cdf = torch.cumsum(histogram.double(), 0) / histogram.double().sum().clamp_min(1)
    i = int(torch.searchsorted(cdf, torch.tensor(PERCENTILE / 100, dtype=cdf.dtype)).clamp(max=len(cdf) - 1))
    return top * (i + 1) / len(cdf)


def onnx_method(name: str):
    """The onnxruntime ``CalibrationMethod`` for ``name``."""
    from onnxruntime.quantization import CalibrationMethod

    return getattr(CalibrationMethod, ONNX_METHODS[name])


def tflite_config(name: str, per_channel: bool = True):
    """litert-torch's symmetric int8 config with the activation observer for ``name``."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    config = get_symmetric_quantization_config(is_per_channel=per_channel)
    if name == "mse":
        return config  # HistogramObserver already
    observer = _observer(name).with_args(eps=2**-12)
    spec = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observer)
    return dataclasses.replace(config, input_activation=spec, output_activation=spec)


def _observer(name: str):
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    if name == "minmax":
        return MinMaxObserver

    class PercentileObserver(HistogramObserver):
        """The histogram's quantiles instead of its L2 search: clips the rarest outliers, keeps the rest."""

        def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
            cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum().clamp_min(1)
            width = (self.max_val - self.min_val) / self.bins
            tail = (100 - PERCENTILE) / 100
            lo = torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)).clamp(max=self.bins - 1)
            hi = torch.searchsorted(cdf, torch.tensor(1 - tail, dtype=cdf.dtype)).clamp(max=self.bins - 1)
            return self.min_val + width * lo, self.min_val + width * (hi + 1)

    return PercentileObserver
