"""edgerep's kernel suite as .tflite files, written the way litert-torch writes users' models, to calibrate LiteRT.

Each ``KernelSpec`` (the kernels and sampled shapes of ``kernel_suite``) becomes a small PyTorch module that
litert-torch converts: NHWC input and output (no TRANSPOSE at either end, as an NHWC export), the converter's own
fusions (conv + bias + ReLU into one CONV_2D, a stride-2 symmetric padding as an explicit PAD), in fp32, or
full-integer int8 through edgerep's PT2E path (``backends.tflite.pt2e_int8``: litert-torch's quantizer,
symmetric per-channel int8 weights, int8 activations, int8 input and output). Ops that quantizer leaves in float
stay float inside the int8 file between a DEQUANTIZE and a QUANTIZE, exactly as in a user's int8 file: that
requantization is part of what LiteRT spends there. TFLite has one MUL whatever its operands' shapes (costed as
``mul``), and in fp32 litert-torch folds ``mul_broadcast``'s constant per-channel scale into the conv before it:
that kernel's files are samples of ``mul`` (int8) and of depthwise convs (fp32).

Building dominates a LiteRT calibration: litert-torch takes about 2 s per fp32 model and 3.4 s per int8 model
here (torch.export, its passes and PT2E run per module), against 0.2-0.5 s to time one. ``build_tflite`` converts
many specs in one call as the signatures of one model and splits that into one single-subgraph file per spec
(``split_signatures``), which saves the per-call part (2.6 -> 2.0 s fp32, 3.6 -> 3.3 s int8, 33 specs, one core).
Built files are kept under ``suite_dir()`` (per edgerep and litert-torch version): calibrating another device,
or resuming, converts nothing twice.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import require
from ..resources import cache_dir
from .kernel_suite import CONTEXT, KERNELS, KernelSpec, _kernel_size
from .style_nets import InvertedResidual, SqueezeExcite

BETWEEN = frozenset(k for k in KERNELS if not k.startswith(("conv", "pointwise", "depthwise", "fc")))
"""Kernels timed between two depthwise 3x3 convs, as inside a network (add, mul and concat take their second
operand from a third one): in int8 the op reads an int8 tensor from a quantized kernel (the quantizer annotates a
sigmoid or a mean only after one; an op it leaves float gets its DEQUANTIZE and QUANTIZE) and the file keeps int8
input and output; in fp32 the op reads a tensor another kernel just wrote."""
OTHER_OPERAND = ("add", "mul", "copy:concat")
CALIBRATION_INPUTS = 2
"""Random inputs the int8 activation ranges are observed on: latency does not depend on the values."""
BATCH = 24
"""Specs converted per litert-torch call (its fixed cost amortized; an interruption loses at most one batch)."""


def suite_dir() -> Path:
    """Where built suite files are cached: one folder per edgerep version (it defines the modules) and litert-torch
    version (its lowering decides the ops)."""
    from importlib.metadata import version

    from .._version import __version__

    return cache_dir() / "litert-suite" / f"edgerep-{__version__}_litert-torch-{version('litert-torch')}"


def build_tflite(jobs: list[tuple[KernelSpec, str]], directory: Path | None = None
                 ) -> dict[tuple[KernelSpec, str], Path]:
    """The .tflite file of each (spec, precision) job under ``directory`` (default ``suite_dir()``), converting
    only the ones not there yet, ``BATCH`` per litert-torch call; every file is written through a rename."""
    directory = Path(directory or suite_dir())
    directory.mkdir(parents=True, exist_ok=True)
    paths = {(s, p): directory / f"{s.id}_{p}.tflite" for s, p in jobs}
    todo = [(s, p) for (s, p), path in paths.items() if not path.is_file()]
    for precision in ("fp32", "int8"):
        specs = [s for s, p in todo if p == precision]
        for start in range(0, len(specs), BATCH):
            batch = specs[start:start + BATCH]
            parts = split_signatures(_convert(batch, precision == "int8"))
            for spec in batch:
                _write_atomic(paths[(spec, precision)], parts[_signature(spec)])
    return paths


def _signature(spec: KernelSpec) -> str:
    return "k_" + "".join(ch if ch.isalnum() else "_" for ch in spec.id)


def _convert(specs: list[KernelSpec], int8: bool) -> bytes:
    """One litert-torch conversion of ``specs`` as the signatures of one model (PT2E int8 if ``int8``)."""
    require("litert_torch", "tflite")
    from ..backends import tflite

    converter = tflite.litert_torch.Converter()
    quant = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export / PT2E deprecation notes, once per module
        for spec in specs:
            module = SuiteNet(spec).eval()
            sample = torch.zeros(module.input_shape)
            if int8:
                rng = torch.Generator().manual_seed(zlib.crc32(spec.id.encode()))
                images = torch.randn((CALIBRATION_INPUTS, *module.input_shape[1:]), generator=rng)
                module, quant = tflite.pt2e_int8(module, "x", sample, images, "minmax", float_output=False)
            converter.signature(_signature(spec), module, sample_kwargs={"x": sample})
        with tflite._quiet(), tempfile.TemporaryDirectory(prefix="edgerep-suite-") as tmp:
            converter.convert(quant_config=quant).export(str(Path(tmp) / "suite.tflite"))
            return (Path(tmp) / "suite.tflite").read_bytes()


def split_signatures(model_bytes: bytes) -> dict[str, bytes]:
    """One single-subgraph .tflite per signature of a multi-signature model, keyed by signature name: the
    subgraph, the buffers its tensors use (renumbered) and the model's metadata. The runners and ``graph_cost``
    read subgraph 0 of a file."""
    fb = require("ai_edge_litert.tools.flatbuffer_utils", "tflite")
    model = fb.read_model_from_bytearray(bytearray(model_bytes))
    out = {}
    for sig in model.signatureDefs:
        sub = model.subgraphs[sig.subgraphIndex]
        metadata = [copy.copy(m) for m in model.metadata or []]
        used = sorted({0} | {t.buffer for t in sub.tensors} | {m.buffer for m in metadata})
        new = {old: i for i, old in enumerate(used)}
        for t in sub.tensors:
            t.buffer = new[t.buffer]
        for m in metadata:
            m.buffer = new[m.buffer]
        one = copy.copy(model)
        one.subgraphs, one.buffers, one.metadata = [sub], [model.buffers[b] for b in used], metadata
        one_sig = copy.copy(sig)
        one_sig.subgraphIndex = 0
        one.signatureDefs = [one_sig]
        out[sig.signatureKey.decode()] = bytes(fb.convert_object_to_bytearray(one))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        f.write(data)
    os.replace(f.name, path)


# ------------------------------------------------------------------------------------------------ modules


def _dw(c: int, k: int = 3, s: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c, c, k, s, k // 2, groups=c)


class _Kernel(nn.Module):
    """One copy of the spec's kernel (``kernel_suite._layer`` in PyTorch); reads the chain ``y`` and, for add /
    mul / concat, the second operand ``x``."""

    def __init__(self, spec: KernelSpec, i: int) -> None:
        super().__init__()
        kern, c = spec.kernel, spec.cin
        self.kernel, self.c = kern, c
        self.op: nn.Module = nn.Identity()
        if kern.startswith(("conv", "gconv", "pointwise")):
            k, s = _kernel_size(kern), 2 if kern.endswith("s2") else 1
            cin, cout = (c, spec.cout) if i % 2 == 0 else (spec.cout, c)  # a pointwise chain alternates widths
            groups = c // spec.width if kern.startswith("gconv") else 1
            conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups)
            self.op = nn.Sequential(conv, nn.ReLU()) if spec.act == "relu" else conv
        elif kern.startswith("depthwise"):
            self.op = _dw(c, 3 if "3x3" in kern else 5, 2 if kern.endswith("s2") else 1)
        elif kern == "fc":
            self.op = nn.Linear(c, spec.cout)
        elif kern.startswith("act:"):
            self.op = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                       "hardsigmoid": nn.Hardsigmoid, "gelu": nn.GELU, "silu": nn.SiLU}[kern[4:]]()
        elif kern == "mul_broadcast":
            self.gate = nn.Parameter(torch.randn(1, c, 1, 1) * 0.1)
        elif kern == "pool:window":
            self.op = nn.MaxPool2d(3, 2, 1)
        elif kern == "block:se":
            self.op = SqueezeExcite(c, max(8, c // 4))
        elif kern == "block:mbconv":
            self.op = InvertedResidual(c, c, 6 * c, 3, 1, act="relu")
        elif kern not in ("add", "mul", "pool:global") and not kern.startswith("copy:"):
            raise ValueError(f"suite kernel {kern!r} has no litert module")

    def forward(self, y: torch.Tensor, x: torch.Tensor):
        kern, c = self.kernel, self.c
        if kern == "add":
            return y + x
        if kern == "mul":
            return y * x
        if kern == "mul_broadcast":
            return y * self.gate
        if kern == "pool:global":
            return F.adaptive_avg_pool2d(y, 1)
        if kern == "copy:concat":  # two tensors with their own ranges, as in a network
            return torch.cat([y, x], 1)
        if kern == "copy:pad":
            return F.pad(y, (1, 1, 1, 1))
        if kern == "copy:transpose":  # H <-> W: a real transpose in either layout
            return y.transpose(2, 3)
        if kern == "copy:split":
            return torch.split(y, [c // 2, c - c // 2], 1)
        if kern == "copy:slice":
            return y[:, : c // 2]
        if kern == "copy:resize":
            return F.interpolate(y, scale_factor=2.0, mode="nearest")
        return self.op(y)


class SuiteNet(nn.Module):
    """The spec as a module taking and returning NHWC tensors (``input_shape``), like ``build_onnx``'s graph: the
    kernel ``depth`` times in a row, between depthwise 3x3 convs for ``BETWEEN`` kernels (the one after has the
    kernel's output channels: the input's times the ``CONTEXT`` value, or as many)."""

    def __init__(self, spec: KernelSpec) -> None:
        super().__init__()
        c = spec.cin
        with torch.random.fork_rng():  # the same weights every build, the caller's generator untouched
            torch.manual_seed(zlib.crc32(spec.id.encode()))
            between = spec.kernel in BETWEEN
            self.before = _dw(c) if between else None
            self.other = _dw(c) if spec.kernel in OTHER_OPERAND else None
            self.chain = nn.ModuleList(_Kernel(spec, i) for i in range(spec.depth))
            self.after = _dw(int(c * (CONTEXT.get(spec.kernel) or 1.0))) if between else None
        self.input_shape = (1, c) if spec.kernel == "fc" else (1, spec.size, spec.size, c)

    def forward(self, x: torch.Tensor):
        x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x  # NHWC in: the converter cancels the permutes
        y = self.before(x) if self.before is not None else x
        other = self.other(x) if self.other is not None else x
        for layer in self.chain:
            y = layer(y, other)
        outs = list(y) if isinstance(y, tuple) else [y]  # split: both parts are outputs
        if self.after is not None:
            outs[0] = self.after(outs[0])
        outs = [o.permute(0, 2, 3, 1) if o.dim() == 4 else o for o in outs]
        return tuple(outs) if len(outs) > 1 else outs[0]
