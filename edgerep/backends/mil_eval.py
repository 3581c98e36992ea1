"""Evaluate a saved Core ML ML Program (.mlpackage) with torch, so Core ML artifacts are checked on Linux.

``MLModel.predict`` only runs on macOS. The .mlpackage still holds the whole MIL program (ops, constants,
compressed weights), and coremltools can load it back (``milproto.load``) on any OS. This module walks
that program's ops in order and evaluates each one with torch.

Why it can be trusted as a check:
- Every op is evaluated from its MIL definition (our own code, not coremltools' value inference), so a
  conversion or compression bug shows up as a difference from PyTorch instead of being reproduced.
- Each op computes in float32 and its result is rounded to the dtype MIL declares for it (fp16 activations
  are stored as fp16 between ops), which is how an fp16 program loses precision on a device.
- An op the evaluator does not know stops evaluation *before* anything runs, naming every unknown op type
  and the first op of each; nothing is skipped silently. ``SUPPORTED_OPS`` lists what is known.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BadInputError, EdgerepError, require


class UnsupportedOpError(EdgerepError):
    """The program uses a MIL op (or an op variant) the evaluator cannot compute; the message names it."""


def load_program(path: str | Path, function: str = "main"):
    """The MIL function ``function`` of the ML Program saved at ``path`` (a .mlpackage), on any OS."""
    ct = require("coremltools", "coreml")

    path = Path(path)
    if not path.exists():
        raise BadInputError(f"Core ML model {path} does not exist")
    return program_of(ct.models.MLModel(str(path), skip_model_load=True), function, str(path))


def program_of(mlmodel, function: str = "main", where: str = "the Core ML model"):
    """The MIL function ``function`` of an MLModel (saved or just converted), as its protobuf holds it.

    Reading the protobuf back, not the converter's in-memory program, gives the names and values the saved
    artifact will have (activation calibration keys its ranges by these names).
    """
    from coremltools.converters.mil.frontend.milproto import load as milproto

    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise BadInputError(f"{where} is a {spec.WhichOneof('Type')} Core ML model; only ML Programs can be evaluated")
    program = milproto.load(spec, spec.specificationVersion, mlmodel.weights_dir)
    if function not in program.functions:
        raise BadInputError(f"{where} has no function {function!r}; it has: {', '.join(program.functions)}")
    return program.functions[function]


def op_types(function) -> Counter:
    """How many ops of each type the MIL function holds (consts included)."""
    return Counter(op.op_type for op in function.operations)


class MilEvaluator:
    """A loaded MIL function, ready to evaluate: constants and compressed weights are decoded once."""

    def __init__(self, function) -> None:
        self.function = function
        unknown: dict[str, str] = {}
        for op in function.operations:
            if op.op_type not in _HANDLERS:
                unknown.setdefault(op.op_type, op.name)
        if unknown:
            found = ", ".join(f"{t} (first: {n})" for t, n in unknown.items())
            raise UnsupportedOpError(
                f"the MIL evaluator does not support op {found}; supported: {', '.join(SUPPORTED_OPS)}"
            )
        self.input_names = list(function.inputs)
        self.output_names = [v.name for v in function.outputs]
        self._consts: dict[str, object] = {}
        self._steps = []
        for op in function.operations:
            if op.op_type == "const":
                self._consts[op.outputs[0].name] = _as_compute(_const_value(op.outputs[0].val))
            elif op.op_type.startswith("constexpr_"):  # input-independent: decode the weights once
                self._store(self._consts, op, _HANDLERS[op.op_type](_Args(op, self._consts)))
                self._consts[op.outputs[0].name] = _as_compute(self._consts[op.outputs[0].name])
            else:
                self._steps.append(op)

    @classmethod
    def from_path(cls, path: str | Path, function: str = "main") -> MilEvaluator:
        return cls(load_program(path, function))

    def __call__(
        self, inputs: Mapping[str, np.ndarray | Tensor], observe: Callable[[str, Tensor], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Evaluate one set of inputs (shapes as the program declares them); returns every output by name.

        ``observe(name, value)`` is called with every input and every tensor an op computes, in program order
        (what activation calibration needs: the range of each intermediate tensor).
        """
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise BadInputError(f"MIL program input {missing[0]!r} not given; inputs: {', '.join(self.input_names)}")
        env: dict[str, object] = dict(self._consts)
        for name, var in self.function.inputs.items():
            x = torch.as_tensor(np.asarray(inputs[name]))
            if tuple(x.shape) != tuple(var.shape):
                raise BadInputError(f"MIL program input {name!r} has shape {tuple(var.shape)}, got {tuple(x.shape)}")
            env[name] = x.to(_torch_dtype(var.dtype))
            if observe is not None:
                observe(name, env[name])
        for op in self._steps:
            try:
                result = _HANDLERS[op.op_type](_Args(op, env))
            except UnsupportedOpError:
                raise
            except Exception as exc:  # a shape/dtype surprise: say which op, never a bare traceback line
                raise UnsupportedOpError(f"MIL op {op.op_type} ({op.name}) failed to evaluate: {exc}") from exc
            self._store(env, op, result)
            if observe is not None:
                for var in op.outputs:
                    if isinstance(env[var.name], Tensor):
                        observe(var.name, env[var.name])
        return {n: _to_numpy(env[n]) for n in self.output_names}

    @staticmethod
    def _store(env: dict, op, result) -> None:
        results = result if isinstance(result, tuple) else (result,)
        for var, value in zip(op.outputs, results):
            env[var.name] = value.to(_torch_dtype(var.dtype)) if isinstance(value, Tensor) else value


def evaluate(path: str | Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One-shot: load the .mlpackage at ``path`` and evaluate it on ``inputs``."""
    return MilEvaluator.from_path(path)(inputs)


# --- values and dtypes ---------------------------------------------------------------------------------------------


def _const_value(val):
    """Tensors as torch tensors (their own dtype); strings, bools and other scalars as Python values."""
    if isinstance(val, np.ndarray) and val.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(val))
    if isinstance(val, np.generic):
        return val.item()
    return val


def _as_compute(value):
    """Float constants as float32 once (lossless: their fp16 rounding is already in the values)."""
    return value.float() if isinstance(value, Tensor) and value.is_floating_point() else value


def _torch_dtype(mil_dtype) -> torch.dtype:
    from coremltools.converters.mil.mil import types

    if types.is_tensor(mil_dtype):
        mil_dtype = mil_dtype.get_primitive()
    np_dtype = np.dtype(types.nptype_from_builtin(mil_dtype))
    return torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


class _Args:
    """An op's inputs: ``t`` gives tensors (floats as float32 for the math), ``v`` gives constant parameters."""

    def __init__(self, op, env: Mapping[str, object]) -> None:
        self.op = op
        self._env = env

    def _value(self, var):
        if var.name in self._env:
            return self._env[var.name]
        return _const_value(var.val)  # immediate values are stored inline in the op, not as const ops

    def has(self, name: str) -> bool:
        return self.op.inputs.get(name) is not None

    def t(self, name: str) -> Tensor:
        return self._tensor(self.op.inputs[name])

    def ts(self, name: str) -> list[Tensor]:
        return [self._tensor(v) for v in self.op.inputs[name]]

    def _tensor(self, var) -> Tensor:
        x = self._value(var)
        x = x if isinstance(x, Tensor) else torch.as_tensor(x)
        return x.float() if x.is_floating_point() else x

    def v(self, name: str, default=None):
        """A constant parameter as plain Python (list, int, float, str, bool), or ``default`` when absent."""
        if not self.has(name):
            return default
        x = self._value(self.op.inputs[name])
        return x.tolist() if isinstance(x, Tensor) else x

    def unsupported(self, what: str) -> UnsupportedOpError:
        where = f"MIL op {self.op.op_type} ({self.op.name})"
        return UnsupportedOpError(f"{where}: {what} is not supported by the evaluator")


# --- op handlers ---------------------------------------------------------------------------------------------------

_HANDLERS: dict[str, Callable[[_Args], object]] = {}


def _op(*names: str):
    def register(fn):
        for n in names:
            _HANDLERS[n] = fn
        return fn

    return register


@_op("const")
def _const(a: _Args):  # consts are read when the evaluator is built; listed so they count as supported
    return a.op.outputs[0].val


@_op("identity")
def _identity(a: _Args) -> Tensor:
    return a.t("x")


@_op("cast")
def _cast(a: _Args) -> Tensor:
    return a.t("x")  # the declared output dtype is applied when the result is stored


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "relu6": lambda x: x.clamp(0.0, 6.0),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "erf": torch.erf,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "square": torch.square,
    "sign": torch.sign,
    "softsign": F.softsign,
}


def _unary(name: str) -> Callable[[_Args], Tensor]:
    fn = _UNARY[name]
    return lambda a: fn(a.t("x"))


for _name in _UNARY:
    _HANDLERS[_name] = _unary(_name)


@_op("rsqrt")
def _rsqrt(a: _Args) -> Tensor:
    return torch.rsqrt(a.t("x") + a.v("epsilon", 1e-12))


@_op("inverse")
def _inverse(a: _Args) -> Tensor:
    return 1.0 / (a.t("x") + a.v("epsilon", 1e-4))


@_op("sigmoid_hard")
def _sigmoid_hard(a: _Args) -> Tensor:
    return (a.v("alpha", 0.2) * a.t("x") + a.v("beta", 0.5)).clamp(0.0, 1.0)


@_op("clip")
def _clip(a: _Args) -> Tensor:
    return a.t("x").clamp(a.v("alpha"), a.v("beta"))


@_op("leaky_relu")
def _leaky_relu(a: _Args) -> Tensor:
    return F.leaky_relu(a.t("x"), a.v("alpha", 0.01))


@_op("elu")
def _elu(a: _Args) -> Tensor:
    return F.elu(a.t("x"), a.v("alpha", 1.0))


@_op("prelu")
def _prelu(a: _Args) -> Tensor:
    x = a.t("x")
    alpha = a.t("alpha").reshape([1, -1] + [1] * (x.dim() - 2))  # one slope per channel (axis 1)
    return torch.where(x >= 0, x, x * alpha)


@_op("softplus")
def _softplus(a: _Args) -> Tensor:
    return F.softplus(a.t("x"))


@_op("gelu")
def _gelu(a: _Args) -> Tensor:
    mode = a.v("mode", "EXACT")
    x = a.t("x")
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise a.unsupported(f"mode {mode!r}")


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "real_div": torch.div,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "pow": torch.pow,
    "floor_div": lambda x, y: torch.div(x, y, rounding_mode="floor"),
}


def _binary(name: str) -> Callable[[_Args], Tensor]:
    fn = _BINARY[name]
    return lambda a: fn(a.t("x"), a.t("y"))


for _name in _BINARY:
    _HANDLERS[_name] = _binary(_name)

# Comparisons give bool tensors (a later ``cast`` turns them into 0/1): MSGC's hard gates are ``logit >= 0``.
_COMPARE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "greater": torch.gt,
    "greater_equal": torch.ge,
    "less": torch.lt,
    "less_equal": torch.le,
    "equal": torch.eq,
    "not_equal": torch.ne,
}

for _name, _fn in _COMPARE.items():
    _HANDLERS[_name] = (lambda fn: lambda a: fn(a.t("x"), a.t("y")))(_fn)


@_op("gather")
def _gather(a: _Args) -> Tensor:
    """Index-select along ``axis``; the result's shape is x[:axis] + indices + x[axis+1:] (MSGC's channel picks)."""
    if a.v("batch_dims", 0) != 0:
        raise a.unsupported("gather with batch_dims != 0")
    x, idx, axis = a.t("x"), a.t("indices").long(), a.v("axis", 0)
    axis = axis % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


@_op("softmax")
def _softmax(a: _Args) -> Tensor:
    return torch.softmax(a.t("x"), dim=a.v("axis", -1))


# --- convolution, linear, pooling ----------------------------------------------------------------------------------


def _spatial_pads(a: _Args, x: Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """[begin_0, end_0, begin_1, end_1, ...] over the spatial axes, from MIL's pad_type (+ pad when custom)."""
    pad_type = a.v("pad_type", "valid")
    n = len(kernel)
    if pad_type == "valid":
        return [0] * (2 * n)
    if pad_type == "custom":
        pad = [int(p) for p in a.v("pad", [0] * (2 * n))]
        if len(pad) != 2 * n:
            raise a.unsupported(f"pad {pad} for {n} spatial axes")
        return pad
    if pad_type in ("same", "same_lower"):
        pads = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            begin = total // 2 if pad_type == "same" else total - total // 2
            pads += [begin, total - begin]
        return pads
    raise a.unsupported(f"pad_type {pad_type!r}")


def _pad_spatial(x: Tensor, pads: list[int], value: float = 0.0) -> Tensor:
    if not any(pads):
        return x
    torch_pads = []
    for i in reversed(range(len(pads) // 2)):  # F.pad lists the last axis first
        torch_pads += [pads[2 * i], pads[2 * i + 1]]
    return F.pad(x, torch_pads, value=value)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


@_op("conv")
def _conv(a: _Args) -> Tensor:
    x, w = a.t("x"), a.t("weight")
    n = x.dim() - 2
    if n not in _CONV:
        raise a.unsupported(f"{n}-d convolution")
    strides = a.v("strides", [1] * n)
    dilations = a.v("dilations", [1] * n)
    pads = _spatial_pads(a, x, list(w.shape[2:]), strides, dilations)
    bias = a.t("bias") if a.has("bias") else None
    return _CONV[n](_pad_spatial(x, pads), w, bias, strides, 0, dilations, a.v("groups", 1))


@_op("linear")
def _linear(a: _Args) -> Tensor:
    return F.linear(a.t("x"), a.t("weight"), a.t("bias") if a.has("bias") else None)


@_op("matmul")
def _matmul(a: _Args) -> Tensor:
    x, y = a.t("x"), a.t("y")
    if a.v("transpose_x", False):
        x = x.transpose(-1, -2)
    if a.v("transpose_y", False):
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _pool_geometry(a: _Args, x: Tensor) -> tuple[list[int], list[int], list[int], bool]:
    kernel = a.v("kernel_sizes")
    n = len(kernel)
    if n not in _AVG or x.dim() != n + 2:
        raise a.unsupported(f"{n}-d pooling of a rank-{x.dim()} tensor")
    strides = a.v("strides", [1] * n)
    return kernel, strides, _spatial_pads(a, x, kernel, strides, [1] * n), bool(a.v("ceil_mode", False))


@_op("avg_pool")
def _avg_pool(a: _Args) -> Tensor:
    x = a.t("x")
    kernel, strides, pads, ceil_mode = _pool_geometry(a, x)
    n = len(kernel)
    out = _AVG[n](_pad_spatial(x, pads), kernel, strides, ceil_mode=ceil_mode)
    if a.v("exclude_padding_from_average", False) and any(pads):
        # Average over the real elements only: divide by the share of each window that is not padding.
        ones = _pad_spatial(torch.ones_like(x[:1, :1]), pads)
        out = out / _AVG[n](ones, kernel, strides, ceil_mode=ceil_mode)
    return out


@_op("max_pool")
def _max_pool(a: _Args) -> Tensor:
    x = a.t("x")
    kernel, strides, pads, ceil_mode = _pool_geometry(a, x)
    return _MAX[len(kernel)](_pad_spatial(x, pads, float("-inf")), kernel, strides, ceil_mode=ceil_mode)


# --- normalisation -------------------------------------------------------------------------------------------------


@_op("batch_norm")
def _batch_norm(a: _Args) -> Tensor:
    x = a.t("x")
    gamma = a.t("gamma") if a.has("gamma") else None
    beta = a.t("beta") if a.has("beta") else None
    return F.batch_norm(x, a.t("mean"), a.t("variance"), gamma, beta, False, 0.0, a.v("epsilon", 1e-5))


@_op("layer_norm")
def _layer_norm(a: _Args) -> Tensor:
    x = a.t("x")
    axes = sorted(ax % x.dim() for ax in a.v("axes", list(range(x.dim()))))
    if axes != list(range(x.dim() - len(axes), x.dim())):
        raise a.unsupported(f"normalising over non-trailing axes {axes}")
    shape = list(x.shape[axes[0]:])
    gamma = a.t("gamma") if a.has("gamma") else None
    beta = a.t("beta") if a.has("beta") else None
    return F.layer_norm(x, shape, gamma, beta, a.v("epsilon", 1e-5))


# --- reductions ----------------------------------------------------------------------------------------------------

_REDUCE = {"reduce_mean": torch.mean, "reduce_sum": torch.sum, "reduce_max": torch.amax, "reduce_min": torch.amin}


def _reduce(name: str) -> Callable[[_Args], Tensor]:
    fn = _REDUCE[name]

    def run(a: _Args) -> Tensor:
        x = a.t("x")
        axes = a.v("axes")
        dims = list(range(x.dim())) if axes is None else [int(ax) for ax in axes]
        return fn(x, dim=dims, keepdim=bool(a.v("keep_dims", False)))

    return run


for _name in _REDUCE:
    _HANDLERS[_name] = _reduce(_name)


# --- shape and layout ----------------------------------------------------------------------------------------------


@_op("concat")
def _concat(a: _Args) -> Tensor:
    if a.v("interleave", False):
        raise a.unsupported("interleave=True")
    return torch.cat(a.ts("values"), dim=a.v("axis"))


@_op("reshape")
def _reshape(a: _Args) -> Tensor:
    x = a.t("x")
    shape = [int(s) for s in a.v("shape")]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]  # 0 copies the input's size
    return x.reshape(shape)


@_op("transpose")
def _transpose(a: _Args) -> Tensor:
    return a.t("x").permute(a.v("perm"))


@_op("squeeze")
def _squeeze(a: _Args) -> Tensor:
    x = a.t("x")
    axes = a.v("axes")
    return x.squeeze() if axes is None else x.squeeze(tuple(int(ax) for ax in axes))


@_op("expand_dims")
def _expand_dims(a: _Args) -> Tensor:
    x = a.t("x")
    rank = x.dim() + len(a.v("axes"))
    for ax in sorted(int(ax) % rank for ax in a.v("axes")):
        x = x.unsqueeze(ax)
    return x


@_op("tile")
def _tile(a: _Args) -> Tensor:
    return a.t("x").repeat(a.v("reps"))


@_op("pad")
def _pad(a: _Args) -> Tensor:
    x = a.t("x")
    pad = [int(p) for p in a.v("pad")]  # (begin, end) pairs for the *last* len(pad)/2 axes, first axis first
    mode = a.v("mode", "constant")
    torch_pads = []
    for i in reversed(range(len(pad) // 2)):
        torch_pads += [pad[2 * i], pad[2 * i + 1]]
    if mode == "constant":
        return F.pad(x, torch_pads, value=float(a.v("constant_val", 0.0)))
    if mode in ("reflect", "replicate"):
        return F.pad(x, torch_pads, mode=mode)
    raise a.unsupported(f"mode {mode!r}")


@_op("slice_by_index")
def _slice_by_index(a: _Args) -> Tensor:
    x = a.t("x")
    rank = x.dim()
    begin, end = a.v("begin"), a.v("end")
    stride = a.v("stride", [1] * rank)
    begin_mask = a.v("begin_mask", [False] * rank)
    end_mask = a.v("end_mask", [False] * rank)
    squeeze_mask = a.v("squeeze_mask", [False] * rank)
    if any(s < 0 for s in stride):
        raise a.unsupported("a negative stride")
    index = []
    for i in range(rank):
        b = None if begin_mask[i] else int(begin[i])
        e = None if end_mask[i] else int(end[i])
        index.append(int(begin[i]) if squeeze_mask[i] else slice(b, e, int(stride[i])))
    return x[tuple(index)]


@_op("split")
def _split(a: _Args) -> tuple[Tensor, ...]:
    x = a.t("x")
    axis = a.v("axis")
    sizes = a.v("split_sizes")
    if sizes is None:
        sizes = x.shape[axis] // a.v("num_splits")
    return tuple(torch.split(x, sizes, dim=axis))


# --- quantization and compressed weights ---------------------------------------------------------------------------


def _per_axis(p: Tensor, rank: int, axis: int | None) -> Tensor:
    """A scale / zero point (a scalar or one value per ``axis``) shaped to broadcast over a rank-``rank`` tensor."""
    if p.dim() == 0 or p.numel() == 1 and axis is None:
        return p.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return p.reshape(shape)


def _affine_dequantize(a: _Args, data: str) -> Tensor:
    q = a.t(data)
    axis = a.v("axis")
    scale = _per_axis(a.t("scale"), q.dim(), axis)
    zero = _per_axis(a.t("zero_point").float(), q.dim(), axis) if a.has("zero_point") else 0.0
    return (q.float() - zero) * scale


@_op("dequantize")
def _dequantize(a: _Args) -> Tensor:
    return _affine_dequantize(a, "input")


@_op("constexpr_affine_dequantize")
def _constexpr_affine_dequantize(a: _Args) -> Tensor:
    return _affine_dequantize(a, "quantized_data")


@_op("quantize")
def _quantize(a: _Args) -> Tensor:
    x = a.t("input")
    axis = a.v("axis")
    info = torch.iinfo(_torch_dtype(a.op.outputs[0].dtype))
    scale = _per_axis(a.t("scale"), x.dim(), axis)
    zero = _per_axis(a.t("zero_point").float(), x.dim(), axis) if a.has("zero_point") else 0.0
    return (torch.round(x / scale) + zero).clamp(info.min, info.max)  # round half to even, as MIL specifies


def _blockwise(p: Tensor, shape: torch.Size) -> Tensor:
    """Repeat each entry of a per-block parameter over its block, so it matches the dense ``shape``."""
    for axis, (size, blocks) in enumerate(zip(shape, p.shape)):
        if size != blocks:
            p = p.repeat_interleave(size // blocks, dim=axis)
    return p


@_op("constexpr_blockwise_shift_scale")
def _constexpr_blockwise_shift_scale(a: _Args) -> Tensor:
    data = a.t("data").float()
    if a.has("offset"):
        data = data - _blockwise(a.t("offset").float(), data.shape)
    return data * _blockwise(a.t("scale"), data.shape)


@_op("constexpr_lut_to_dense")
def _constexpr_lut_to_dense(a: _Args) -> Tensor:
    lut = a.t("lut")
    if a.has("shape"):  # iOS16: one palette, indices bit-packed LSB first into a flat uint8 array
        shape = [int(s) for s in a.v("shape")]
        nbits = int(round(math.log2(lut.numel())))
        count = math.prod(shape)
        bits = np.unpackbits(a.t("indices").numpy().astype(np.uint8), bitorder="little")[: count * nbits]
        idx = (bits.reshape(count, nbits).astype(np.int64) << np.arange(nbits)).sum(axis=1)
        return lut[torch.from_numpy(idx)].reshape(shape)
    # iOS18: indices have the dense shape; lut is [*blocks, palette, vector] with one palette per block.
    indices = a.t("indices").long()
    if lut.shape[-1] != 1:
        raise a.unsupported(f"vector palettization (vector size {lut.shape[-1]})")
    blocks = lut.shape[:-2]
    block_id = torch.zeros(indices.shape, dtype=torch.long)
    for axis, (size, n) in enumerate(zip(indices.shape, blocks)):
        shape = [1] * indices.dim()
        shape[axis] = size
        block_id = block_id * n + (torch.arange(size) // (size // n)).reshape(shape)
    return lut.reshape(-1, lut.shape[-2])[block_id, indices]


@_op("constexpr_cast")
def _constexpr_cast(a: _Args) -> Tensor:
    return a.t("source_val")


SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_HANDLERS))
"""Every MIL op type the evaluator computes; any other op is refused by name."""
