"""Per-layer cost of a Core ML ML Program (.mlpackage), read from its MIL program on any OS (no Core ML runtime).

The package holds the whole MIL program: every op with typed, shaped outputs, and its weights as ``const`` or
compressed ``constexpr_*`` ops. coremltools reads it back on Linux (``backends.mil_eval.load_program``); this
module walks the ops and produces the same ``GraphCost`` as the ONNX and TFLite front ends (``graph_cost.py``):
the same kinds, kernels and MAC convention, ``partial`` with the named ``uncosted`` ops instead of silent zeros.

What the predictor is told, and why:

- ``precision`` is what the program computes in: ``fp16`` when its convolutions / matmuls output fp16 (fp16,
  w8, palettized and W8A8 programs), else ``fp32``. A W8A8 program is *not* costed as int8: Core ML's int8 x
  int8 compute is a Neural Engine feature (A17 Pro / M4 and later); on the CPU its ``quantize`` / ``dequantize``
  ops are work of their own around fp16 kernels (coremltools docs, "Quantization / Performance": activation
  quantization slows the CPU down). They are costed as kind ``requant``, one per op.
- weights count the bytes the package stores (1 byte per int8 weight, nbits per palette index plus the
  palette), as the TFLite front end counts a DEQUANTIZE'd weight; activations count their MIL dtype's bytes.
- fusions: coremltools already folds BatchNorm, bias adds and scales into the conv at conversion; a ReLU /
  ReLU6 / clip right after a conv or linear is taken as fused into it (as every CPU runtime edgerep costs does;
  Core ML's own compiler is closed, so other activations stay ops of their own). ``cast`` ops (fp32 input to
  fp16 and back) are real conversions: kind ``activation``, as ONNX ``Cast``.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import BadInputError, require
from .graph_cost import GraphCost, LayerCost, _conv_kernel, classify_conv

_ACT = {"relu": "relu", "relu6": "relu", "clip": "relu", "leaky_relu": "relu", "prelu": "relu",
        "thresholded_relu": "relu", "sigmoid": "sigmoid", "sigmoid_hard": "hardsigmoid", "tanh": "tanh",
        "gelu": "gelu", "softmax": "softmax", "silu": "other", "elu": "other", "softplus": "other",
        "softsign": "other", "exp": "other", "log": "other", "sqrt": "other", "rsqrt": "other", "inverse": "other",
        "abs": "other", "erf": "other", "square": "other", "sign": "other", "floor": "other", "ceil": "other",
        "cast": "other"}
_BINARY = {"add": "add", "sub": "add", "maximum": "add", "minimum": "add", "mul": "mul", "real_div": "mul",
           "pow": "mul", "floor_div": "mul", "greater": "add", "greater_equal": "add", "less": "add",
           "less_equal": "add", "equal": "add", "not_equal": "add", "select": "add", "batch_norm": "mul",
           "layer_norm": "mul", "instance_norm": "mul"}
_REDUCE = {"reduce_mean", "reduce_max", "reduce_min", "reduce_sum", "reduce_l2_norm"}
_WINDOW_POOL = {"avg_pool", "max_pool", "l2_pool"}
_DATA = {"transpose": "transpose", "concat": "concat", "split": "split", "slice_by_index": "slice",
         "slice_by_size": "slice", "pad": "pad", "gather": "slice", "gather_along_axis": "slice", "tile": "concat",
         "upsample_nearest_neighbor": "resize", "upsample_bilinear": "resize", "resize_bilinear": "resize",
         "depth_to_space": "transpose", "space_to_depth": "transpose", "pixel_shuffle": "transpose"}
_FREE = {"reshape", "squeeze", "expand_dims", "identity", "shape", "flatten2d"}
_FC = {"linear", "matmul"}
_FUSED_AFTER_CONV = {"relu", "relu6", "clip", "batch_norm"}
"""Ops a runtime folds into the conv / linear before them (BatchNorm is normally already folded by coremltools)."""

CPU_NOTE = ("Core ML graph costed from its MIL program and predicted as CPU execution; Core ML may run it on the GPU "
            "or Neural Engine instead, which this predictor does not model")


def mil_cost(path: Path) -> GraphCost:
    """The per-layer cost of the ML Program saved at ``path``; an unreadable package is a one-line BadInputError."""
    function = _load(path)
    from coremltools.converters.mil.mil import types

    consumers: dict[str, list] = {}
    for op in function.operations:
        for var in _vars(op):
            consumers.setdefault(var.name, []).append(op)
    const: set[str] = set()
    stored: dict[str, int] = {}  # bytes a weight takes in the package (compressed weights: their parts)
    layers, uncosted = [], []
    computes_fp16 = False
    for op in function.operations:
        t = op.op_type
        ins = _vars(op)
        if t == "const" or t.startswith("constexpr_") or (ins and all(v.name in const for v in ins)):
            const.update(v.name for v in op.outputs)
            size = sum(stored.get(v.name, 0) for v in ins) if t != "const" else _nbytes(op.outputs[0], types)
            stored.update({v.name: size for v in op.outputs})
            if t != "const":  # decompressed or folded when the model loads, not per inference
                layers.append(LayerCost(op.name, t, "free", kernel="free"))
            continue
        acts = [v for v in ins if v.name not in const and _is_tensor(v, types)]
        weights = [v for v in ins if v.name in const]
        out = op.outputs[0]
        src = acts[0].op if acts else None
        kind, kernel = _kind(op, src, consumers)
        if kind in ("free", "fused"):
            layers.append(LayerCost(op.name, t, kind, kernel=kind))
            continue
        out_shape = _shape(out, op, path)
        for v in acts:
            _shape(v, op, path)
        macs, elements = 0, math.prod(out_shape)
        if t == "conv":
            w = _shape(op.inputs["weight"], op, path)  # [Cout, Cin / groups, *kernel]
            groups = int(op.inputs["groups"].val) if "groups" in op.inputs else 1
            stride = max(int(s) for s in op.inputs["strides"].val) if "strides" in op.inputs else 1
            kind = classify_conv(groups, w[1] * groups, w[0], w[2:])
            kernel = _conv_kernel(kind, w[2:], stride, groups, w[1])
            macs = math.prod(out_shape) * math.prod(w[1:])
        elif t in _FC:
            x = _shape(op.inputs["x"], op, path)
            if t == "linear":
                k = x[-1]
            else:
                transpose = "transpose_x" in op.inputs and bool(op.inputs["transpose_x"].val)
                k = x[-2] if transpose and len(x) > 1 else x[-1]
            macs = math.prod(out_shape) * k
        elif kind == "pool":
            elements = sum(math.prod(_shape(v, op, path)) for v in acts)
        elif kind == "unknown":
            uncosted.append(f"{op.name} ({t})")
        if t in ("conv", *_FC) and types.builtin_to_string(out.dtype) == "fp16":
            computes_fp16 = True
        act_bytes = sum(_nbytes(v, types) for v in acts) + sum(_nbytes(v, types) for v in op.outputs
                                                                if _is_tensor(v, types))
        w_bytes = sum(stored[v.name] for v in weights)  # 0 for scalar parameters (strides, axes...)
        layers.append(LayerCost(op.name, t, kind, int(macs), int(elements), int(w_bytes), int(act_bytes), out_shape,
                                kernel))
    inputs = list(function.inputs.values())
    in_shape = tuple(_dim(d) for d in inputs[0].shape) if inputs else ()
    notes = [CPU_NOTE]
    requant = sum(layer.kind == "requant" for layer in layers)
    if requant:
        notes.append(f"W8A8: its {requant} quantize / dequantize ops are costed as work around fp16 kernels (int8 x "
                     "int8 compute is a Neural Engine feature, not the CPU's)")
    return GraphCost(str(path), "coreml", "fp16" if computes_fp16 else "fp32", in_shape, layers, uncosted, notes)


def _load(path: Path):
    """The ``main`` function of the package's ML Program; anything unreadable is one line naming the package."""
    if not path.exists():
        raise BadInputError(f"Core ML package {path} does not exist; give an .mlpackage folder")
    ct = require("coremltools", "coreml")
    from ..backends.mil_eval import program_of

    try:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        kind = mlmodel.get_spec().WhichOneof("Type")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BadInputError(f"{path} is not a readable Core ML package ({type(exc).__name__}: {first}); "
                            "export it again (edgerep export --target coreml)") from None
    if kind != "mlProgram":
        raise BadInputError(f"{path} is a {kind} Core ML model; only ML Programs (.mlpackage) are costed: "
                            "convert with convert_to='mlprogram'")
    try:
        return program_of(mlmodel, "main", str(path))
    except BadInputError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BadInputError(f"{path}: its MIL program cannot be read ({type(exc).__name__}: {first}); "
                            "export it again (edgerep export --target coreml)") from None


def _vars(op) -> list:
    """Every Var an op reads (a concat's ``values`` is a tuple of them)."""
    out = []
    for value in op.inputs.values():
        out.extend(value if isinstance(value, (list, tuple)) else [value])
    return out


def _is_tensor(var, types) -> bool:
    return types.is_tensor(var.sym_type)


def _kind(op, src, consumers: dict) -> tuple[str, str]:
    """(kind, kernel) of one op; the conv kernel is completed by the caller."""
    t = op.op_type
    if t == "conv":
        return "conv", ""
    if t in _FC:
        return "fc", "fc"
    if t in ("quantize", "dequantize"):
        return "requant", "requant"
    if t in _FREE:
        return "free", "free"
    x = op.inputs.get("x")
    single = x is not None and len(consumers.get(x.name, [])) == 1
    if single and src is not None and src.op_type in ("conv", *_FC) and t in _FUSED_AFTER_CONV:
        return "fused", "fused"
    if t in _ACT:
        return "activation", f"act:{_ACT[t]}"
    if t in _BINARY:
        return "elementwise", _BINARY[t]
    if t in _REDUCE:
        return "pool", "pool:global" if _global(op) else "pool:reduce"
    if t in _WINDOW_POOL:
        return "pool", "pool:window"
    if t in _DATA:
        return "data", f"copy:{_DATA[t]}"
    return "unknown", f"unknown:{t}"


def _global(op) -> bool:
    """A reduction over every spatial axis of an NCHW tensor: what onnxruntime / TFLite run as a global pool."""
    axes = op.inputs.get("axes")
    rank = len(op.inputs["x"].shape)
    if axes is None or axes.val is None or rank < 3:
        return False
    return sorted(int(a) % rank for a in axes.val) == list(range(2, rank))


def _dim(d) -> int:
    try:
        return int(d)
    except TypeError:  # a symbolic dimension (a flexible batch): costed per batch-1 inference
        return 1


def _shape(var, op, path: Path) -> tuple[int, ...]:
    """Static shape of ``var``; a symbolic dimension other than the batch is a one-line BadInputError."""
    dims = []
    for i, d in enumerate(var.shape):
        try:
            dims.append(int(d))
        except TypeError:
            if i:
                raise BadInputError(f"{path}: cannot cost op {op.name!r} ({op.op_type}): {var.name!r} has the "
                                    f"flexible shape {var.shape}; export with a fixed input shape") from None
            dims.append(1)
    return tuple(dims)


def _nbytes(var, types) -> int:
    """Bytes of a tensor in its MIL dtype (sub-byte palette indices at their bit width)."""
    if not _is_tensor(var, types):
        return 0
    dtype = var.dtype
    bits = dtype.get_bitwidth() if hasattr(dtype, "get_bitwidth") else 8
    return math.ceil(math.prod(_dim(d) for d in var.shape) * bits / 8)
