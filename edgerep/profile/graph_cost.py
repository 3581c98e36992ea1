"""Per-layer cost of an exported graph (ONNX or TFLite): op kind, MACs and bytes moved, read from the file alone.

This is what the latency predictor runs on, so it must work on any user's file, not only edgerep's exports.
Costs are per batch-1 inference (a symbolic batch dimension is taken as 1). Rules, the same for both formats:

- ``macs``: convolutions (dense, pointwise 1x1, depthwise) and fully connected / matmul layers count
  multiply-accumulates (what ``edgerep.proof.metrics.count_macs`` counts in PyTorch); pools and elementwise ops count
  one operation per output element in ``elements`` instead, so MACs stay comparable with PyTorch's count.
- ``bytes``: activations read and written plus weights read, in the dtype the runtime computes in (a
  quantized ONNX QDQ graph holds float tensors between its Q/DQ pairs, but runtimes fuse them into int8 kernels,
  so its tensors count 1 byte per element).
- kind ``fused``: work a runtime folds into the previous kernel (BatchNorm or ReLU/ReLU6 right after a conv,
  Q/DQ pairs around int8 kernels): no cost, no per-op overhead. Kind ``free``: reshapes and shape arithmetic,
  which move no data.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInputError, require

COMPUTE_KINDS = ("conv", "pointwise", "depthwise", "fc")
KINDS = COMPUTE_KINDS + ("pool", "elementwise", "data", "fused", "free")
COSTED_KINDS = COMPUTE_KINDS + ("pool", "elementwise", "data")
"""Kinds that cost time and a kernel launch; ``fused`` and ``free`` cost nothing."""


@dataclass(frozen=True)
class LayerCost:
    """One op of the graph as a runtime would execute it."""

    name: str
    op: str
    kind: str
    macs: int = 0
    elements: int = 0
    weight_bytes: int = 0
    act_bytes: int = 0
    out_shape: tuple[int, ...] = ()

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.act_bytes


@dataclass
class GraphCost:
    """Every op of a graph with its cost; ``precision`` is the compute precision (``fp32`` or ``int8``)."""

    source: str
    format: str
    precision: str
    input_shape: tuple[int, ...]
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def costed(self) -> list[LayerCost]:
        return [layer for layer in self.layers if layer.kind in COSTED_KINDS]

    def by_kind(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for layer in self.costed:
            d = out.setdefault(layer.kind, {"ops": 0, "macs": 0, "bytes": 0})
            d["ops"] += 1
            d["macs"] += layer.macs
            d["bytes"] += layer.bytes
        return out

    def to_dict(self) -> dict:
        return {
            "source": self.source, "format": self.format, "precision": self.precision,
            "input_shape": list(self.input_shape), "macs": self.macs, "ops": len(self.costed),
            "by_kind": self.by_kind(), "layers": [asdict(layer) for layer in self.layers],
        }


def graph_cost(path: str | Path) -> GraphCost:
    """The per-layer cost of an ``.onnx`` or ``.tflite`` file; any other suffix is a one-line BadInputError."""
    path = Path(path)
    if path.suffix in (".mlpackage", ".mlmodel"):
        raise BadInputError(f"{path.name}: Core ML graphs are not costed (Core ML runs only on macOS); "
                            "give the model's .onnx or .tflite artifact")
    if not path.is_file():
        raise BadInputError(f"artifact {path} does not exist; give an .onnx or .tflite file")
    if path.suffix == ".onnx":
        return _onnx_cost(path)
    if path.suffix == ".tflite":
        return _tflite_cost(path)
    kind = path.suffix or "suffix-less"
    raise BadInputError(f"{path}: cannot read the graph of a {kind} file; give .onnx or .tflite")


def classify_conv(groups: int, cin: int, cout: int, kernel: tuple[int, ...]) -> str:
    """``depthwise`` (one filter per input channel), ``pointwise`` (dense 1x1) or ``conv`` (everything else)."""
    if groups > 1 and groups == cin and cout % cin == 0:
        return "depthwise"
    if groups == 1 and all(k == 1 for k in kernel):
        return "pointwise"
    return "conv"


# ---------------------------------------------------------------------------------------------------- ONNX

_ONNX_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu",
    "PRelu", "Softmax", "Exp", "Sqrt", "Pow", "Erf", "Gelu", "BatchNormalization", "Max", "Min", "Neg",
    "QuantizeLinear", "DequantizeLinear", "Cast", "Abs", "Log", "Reciprocal", "Where", "Equal", "Not",
}
_ONNX_POOL = {"AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum"}
_ONNX_DATA = {"Transpose", "Concat", "Split", "Slice", "Pad", "Resize", "Gather", "Tile", "Expand", "DepthToSpace",
              "SpaceToDepth"}
_ONNX_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "ConstantOfShape",
              "Dropout", "Range", "Size"}
_ONNX_CONV = {"Conv", "QLinearConv", "ConvInteger"}
_ONNX_FC = {"Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"}
_ONNX_QUANT = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
               "QLinearAdd", "QLinearGlobalAveragePool"}
_FUSABLE_ACT = {"Relu", "Clip", "BatchNormalization"}
_NP_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
"""ONNX TensorProto data type -> bytes per element."""


def _onnx_cost(path: Path) -> GraphCost:
    onnx = require("onnx", "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    for inp in graph.input:  # a symbolic batch (or any symbolic dim) is taken as 1, so shapes can be inferred
        for dim in inp.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise BadInputError(f"{path}: ONNX shape inference failed ({exc}); export with static input shapes") from None
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    itemsize: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        itemsize[vi.name] = _NP_SIZE.get(tt.elem_type, 4)
    for name, t in weights.items():
        shapes[name] = tuple(t.dims)
        itemsize[name] = _NP_SIZE.get(t.data_type, 4)

    ops = Counter(n.op_type for n in graph.node)
    quantized = any(op in _ONNX_QUANT for op in ops)
    consumers = Counter(i for n in graph.node for i in n.input)
    producer = {o: n for n in graph.node for o in n.output}
    const = set(weights) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    # weights reached through DequantizeLinear (QDQ) are still weights
    const |= {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in const}

    def numel(name: str) -> int:
        return math.prod(shapes.get(name, ()))

    def nbytes(name: str) -> int:
        return numel(name) * (1 if quantized else itemsize.get(name, 4))

    first_input = next((i for i in graph.input if i.name not in weights), None)
    layers = []
    for i, node in enumerate(graph.node):
        op = node.op_type
        name = node.name or f"{op}_{i}"
        acts_in = [x for x in node.input if x and x not in const]
        w_in = [x for x in node.input if x and x in const]
        out = node.output[0] if node.output else ""
        out_shape = shapes.get(out, ())
        act_bytes = sum(nbytes(x) for x in acts_in) + sum(nbytes(o) for o in node.output if o)
        w_bytes = sum(nbytes(x) for x in w_in)
        macs, elements = 0, math.prod(out_shape) if out_shape else 0
        src = producer.get(acts_in[0]) if acts_in else None
        if op in _ONNX_CONV:
            w = node.input[3] if op == "QLinearConv" else node.input[1]
            wshape = shapes.get(w, ())
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            cin = wshape[1] * groups if len(wshape) > 1 else 0
            kind = classify_conv(groups, cin, wshape[0] if wshape else 0, tuple(wshape[2:]))
            macs = math.prod(out_shape) * math.prod(wshape[1:]) if out_shape and wshape else 0
        elif op in _ONNX_FC:
            kind = "fc"
            a, b = (node.input[0], node.input[3]) if op == "QLinearMatMul" else (node.input[0], node.input[1])
            ka = shapes.get(a, ())
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            k = (ka[-2] if trans_a else ka[-1]) if ka else 0
            macs = math.prod(out_shape) * k if out_shape else 0
        elif op in ("QuantizeLinear", "DequantizeLinear") or (
            op in _FUSABLE_ACT and src is not None and src.op_type in _ONNX_CONV | _ONNX_FC | {"BatchNormalization"}
            and consumers[acts_in[0]] == 1
        ):
            kind = "fused"
        elif op in _ONNX_POOL or op == "QLinearGlobalAveragePool":
            kind = "pool"
            elements = sum(numel(x) for x in acts_in)
        elif op in _ONNX_ELEMENTWISE or op.startswith("QLinear"):
            kind = "elementwise"
        elif op in _ONNX_FREE:
            kind = "free"
        elif op in _ONNX_DATA:
            kind = "data"
        else:  # an op this table does not know still costs a kernel and its data movement
            kind = "elementwise"
        if kind in ("fused", "free"):
            macs = elements = w_bytes = act_bytes = 0
        layers.append(LayerCost(name, op, kind, int(macs), int(elements), int(w_bytes), int(act_bytes), out_shape))
    in_shape = shapes.get(first_input.name, ()) if first_input is not None else ()
    return GraphCost(str(path), "onnx", "int8" if quantized else "fp32", in_shape, layers)


# -------------------------------------------------------------------------------------------------- TFLite

_TFL_POOL = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "SUM", "REDUCE_MAX", "L2_POOL_2D"}
_TFL_DATA = {"TRANSPOSE", "CONCATENATION", "SPLIT", "SPLIT_V", "SLICE", "STRIDED_SLICE", "PAD", "PADV2", "GATHER",
             "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "TILE",
             "BROADCAST_TO", "PACK", "UNPACK", "MIRROR_PAD"}
_TFL_FREE = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SHAPE"}
_TFL_SIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 16: 2, 18: 2}


def _tflite_cost(path: Path) -> GraphCost:
    schema = require("ai_edge_litert.schema_py_generated", "tflite")
    buf = path.read_bytes()
    try:
        model = schema.ModelT.InitFromPackedBuf(buf, 0)
        sub = model.subgraphs[0]
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable TFLite model ({type(exc).__name__}: {exc})") from None
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), str(c.builtinCode)) for c in model.operatorCodes]
    tensors = sub.tensors
    const = {i for i, t in enumerate(tensors) if t.buffer and _has_data(model.buffers[t.buffer])}
    dequant_of_const = {}
    for op in sub.operators:  # fp16 weights go through DEQUANTIZE to fp32: that output is still a weight
        if codes[op.opcodeIndex] == "DEQUANTIZE" and op.inputs[0] in const:
            dequant_of_const[op.outputs[0]] = op.inputs[0]
    const |= set(dequant_of_const)

    def shape(i: int) -> tuple[int, ...]:
        s = tensors[i].shape
        return tuple(int(d) for d in s) if s is not None else ()

    def nbytes(i: int) -> int:
        return math.prod(shape(i)) * _TFL_SIZE.get(tensors[i].type, 4)

    quantized = any(tensors[i].type in (9, 3) for op in sub.operators for i in op.inputs if i >= 0 and i not in const
                    and codes[op.opcodeIndex] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    layers = []
    for n, op in enumerate(sub.operators):
        code = codes[op.opcodeIndex]
        ins = [i for i in op.inputs if i >= 0]
        outs = [i for i in op.outputs if i >= 0]
        acts = [i for i in ins if i not in const]
        wts = [i for i in ins if i in const]
        out_shape = shape(outs[0]) if outs else ()
        act_bytes = sum(nbytes(i) for i in acts + outs)
        w_bytes = sum(nbytes(dequant_of_const.get(i, i)) for i in wts)
        macs, elements = 0, math.prod(out_shape) if out_shape else 0
        if code == "CONV_2D":  # weights [O, kh, kw, I/groups]
            w = shape(ins[1])
            cin = shape(ins[0])[-1]
            groups = cin // w[3] if w[3] else 1
            kind = classify_conv(groups, cin, w[0], w[1:3])
            macs = math.prod(out_shape) * math.prod(w[1:])
        elif code == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, C*multiplier]
            w = shape(ins[1])
            kind, macs = "depthwise", math.prod(out_shape) * w[1] * w[2]
        elif code in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            kind = "fc"
            macs = math.prod(out_shape) * shape(ins[0])[-1]
        elif code == "DEQUANTIZE" and outs and outs[0] in dequant_of_const:
            kind = "free"
        elif code in _TFL_POOL:
            kind, elements = "pool", sum(math.prod(shape(i)) for i in acts)
        elif code in _TFL_FREE:
            kind = "free"
        elif code in _TFL_DATA:
            kind = "data"
        else:
            kind = "elementwise"
        if kind == "free":
            macs = elements = w_bytes = act_bytes = 0
        name = tensors[outs[0]].name.decode() if outs and tensors[outs[0]].name else f"{code}_{n}"
        layers.append(LayerCost(name, code, kind, int(macs), int(elements), int(w_bytes), int(act_bytes), out_shape))
    inp = sub.inputs[0] if sub.inputs is not None and len(sub.inputs) else -1
    return GraphCost(str(path), "tflite", "int8" if quantized else "fp32", shape(inp) if inp >= 0 else (), layers)


def _has_data(buffer) -> bool:
    """A constant tensor's buffer holds bytes inline, or (models over 2 GB) an offset and size."""
    return (buffer.data is not None and len(buffer.data) > 0) or bool(getattr(buffer, "size", 0))
