"""Per-layer cost of an exported graph (ONNX, TFLite or a Core ML ML Program): op kind, kernel, MACs and bytes moved,
from the file alone (Core ML: ``mil_cost.py``, from the package's MIL program).

This is what the latency predictors run on, so it must be right on any user's file, not only edgerep's exports.
Costs are per batch-1 inference (a symbolic batch dimension is taken as 1). Rules, the same for every format:

- every shape is resolved statically (``onnx_shapes.resolve``: shape inference plus folding of shape
  sub-graphs); an op that must be costed but whose shape stays unknown is a BadInputError naming it, and an op
  type no table here knows is listed in ``GraphCost.uncosted`` (the result is then *partial*, and says so):
  never a silent zero.
- ``macs``: convolutions (dense, pointwise 1x1, depthwise) and fully connected / matmul layers count
  multiply-accumulates (what ``edgerep.proof.metrics.count_macs`` counts in PyTorch); pools, activations,
  element-wise ops and copies count one operation per output element in ``elements`` instead.
- ``bytes``: activations read and written plus weights read, in the dtype the runtime computes in (a
  quantized ONNX QDQ graph holds float tensors between its Q/DQ pairs, but runtimes fuse them into int8 kernels,
  so its tensors count 1 byte per element).
- ``positions``: output pixels of a convolution (x groups for a grouped conv): per-pixel and per-group work
  that MACs and bytes do not capture.
- ``kernel``: what the runtime executes, e.g. ``depthwise3x3s2``, ``pointwise``, ``act:hardswish``, ``mul``,
  ``mul_broadcast``, ``pool:global``, ``copy:concat``, ``requant``: the key of a calibrated device's per-kernel
  regressors.
- kind ``fused``: work a runtime folds into the kernel before it (BatchNorm, a bias add, ReLU/clip and - in
  onnxruntime - sigmoid / hard-sigmoid / tanh / leaky-ReLU after a conv; Q/DQ pairs around int8 kernels): no
  cost, no per-op overhead. Kind ``requant``: a Q/DQ pair the runtime keeps (around an op it has no int8 kernel
  for). Kind ``shape``: shape arithmetic on a symbolic dimension (TF-"same" pads of a dynamic-batch export), which
  moves no data but is one more op launched on every run. Kind ``free``: reshapes and constant shape arithmetic.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInputError, require

COMPUTE_KINDS = ("conv", "pointwise", "depthwise", "fc")
COSTED_KINDS = COMPUTE_KINDS + ("activation", "elementwise", "pool", "data", "requant", "shape", "unknown")
KINDS = COSTED_KINDS + ("fused", "free")
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
    kernel: str = ""
    positions: int = 0
    """Convolutions: output pixels (times groups for a grouped conv). Runtimes pay per output pixel (im2col /
    indirection, packing, int8 requantization) and per group (one small GEMM each) on top of the MACs: a 4-channel
    depthwise, a 12-channel int8 pointwise or a narrow-group conv costs far more per MAC than a wide one."""
    groups: int = 0
    """Convolutions: the ``group`` attribute (a runtime's choice of conv code depends on it, ``ort_layout``)."""
    work: int = 0
    """What the runtime really computes when it differs from ``macs`` / ``elements`` (channels padded to a layout's
    block, ``ort_layout``); 0 = the same. ``macs`` stays the model's own count."""
    inputs: tuple[str, ...] = ()
    """ONNX: the activation tensors the op reads (weights and constants left out; shape tensors computed at run
    time last), for passes that follow the data flow (``ort_layout``)."""
    outputs: tuple[str, ...] = ()

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.act_bytes


@dataclass
class GraphCost:
    """Every op of a graph with its cost; ``precision`` is the compute precision (``fp32``, ``int8``, or ``fp16``
    for a Core ML program)."""

    source: str
    format: str
    precision: str
    input_shape: tuple[int, ...]
    layers: list[LayerCost] = field(default_factory=list)
    uncosted: list[str] = field(default_factory=list)
    """Ops of a type no cost table knows (name and op): their time is missing, so the total is partial."""
    notes: list[str] = field(default_factory=list)
    """What a prediction from this cost must say about it (e.g. how a Core ML program is assumed to run)."""
    io_elements: int = 0
    """Elements of the graph's inputs and outputs: copied in and out once per run, a per-model cost no layer
    accounts for."""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    """ONNX: the shape of every activation tensor a layer reads or writes (``LayerCost.inputs`` / ``outputs``)."""
    graph_outputs: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.uncosted)

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
            "input_shape": list(self.input_shape), "io_elements": self.io_elements, "macs": self.macs,
            "ops": len(self.costed),
            "by_kind": self.by_kind(), "partial": self.partial,
            "uncosted": self.uncosted, "notes": self.notes, "layers": [asdict(layer) for layer in self.layers],
        }


def graph_cost(path: str | Path) -> GraphCost:
    """The per-layer cost of an ``.onnx``, ``.tflite`` or ``.mlpackage``; any other suffix is a one-line
    BadInputError."""
    path = Path(path)
    if path.suffix in (".mlpackage", ".mlmodel"):
        from .mil_cost import mil_cost

        return mil_cost(path)
    if not path.is_file():
        raise BadInputError(f"artifact {path} does not exist; give an .onnx, .tflite or .mlpackage file")
    if path.suffix == ".onnx":
        return _onnx_cost(path)
    if path.suffix == ".tflite":
        return _tflite_cost(path)
    kind = path.suffix or "suffix-less"
    raise BadInputError(f"{path}: cannot read the graph of a {kind} file; give .onnx, .tflite or .mlpackage")


def classify_conv(groups: int, cin: int, cout: int, kernel: tuple[int, ...]) -> str:
    """``depthwise`` (one filter per input channel), ``pointwise`` (dense 1x1) or ``conv`` (everything else)."""
    if groups > 1 and groups == cin and cout % cin == 0:
        return "depthwise"
    if groups == 1 and all(k == 1 for k in kernel):
        return "pointwise"
    return "conv"


# ---------------------------------------------------------------------------------------------------- ONNX

_ONNX_ACT = {"Relu": "relu", "Clip": "relu", "LeakyRelu": "relu", "PRelu": "relu", "Sigmoid": "sigmoid",
             "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish", "Tanh": "tanh", "Gelu": "gelu", "Erf": "gelu",
             "Softmax": "softmax", "Exp": "other", "Sqrt": "other", "Pow": "other", "Log": "other",
             "Reciprocal": "other", "Abs": "other", "Neg": "other", "Not": "other", "Cast": "other",
             "Mish": "other", "Softplus": "other", "Elu": "other", "Selu": "other", "Celu": "other",
             "QLinearSigmoid": "sigmoid", "QLinearLeakyRelu": "relu", "QLinearSoftmax": "softmax"}
_ONNX_BINARY = {"Add": "add", "Sub": "add", "Mul": "mul", "Div": "mul", "Max": "add", "Min": "add", "Where": "add",
                "Equal": "add", "Less": "add", "Greater": "add", "Sum": "add", "Mean": "add",
                "BatchNormalization": "mul",
                "QLinearAdd": "add", "QLinearMul": "mul", "InstanceNormalization": "mul",
                "LayerNormalization": "mul"}
_ONNX_GLOBAL_POOL = {"GlobalAveragePool", "GlobalMaxPool", "QLinearGlobalAveragePool"}
_ONNX_REDUCE = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2"}
"""onnxruntime runs these with its generic reduction kernel, slower per element than its global pools."""
_ONNX_WINDOW_POOL = {"AveragePool", "MaxPool", "QLinearAveragePool", "LpPool"}
_ONNX_DATA = {"Transpose": "transpose", "Concat": "concat", "QLinearConcat": "concat", "Split": "split",
              "Slice": "slice", "Pad": "pad", "Resize": "resize", "Upsample": "resize", "Gather": "slice",
              "Tile": "concat", "Expand": "concat", "DepthToSpace": "transpose", "SpaceToDepth": "transpose"}
_ONNX_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "ConstantOfShape",
              "Dropout", "Range", "Size"}
_ONNX_CONV = {"Conv", "QLinearConv", "ConvInteger"}
_ONNX_FC = {"Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat"}
_ONNX_QUANT = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
               "QLinearAdd", "QLinearGlobalAveragePool", "QLinearMul", "QLinearConcat", "QGemm",
               "QLinearSigmoid", "QLinearAveragePool", "DynamicQuantizeLinear"}
_CONV_FUSED_ACT = {"fp32": {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"},
                   "int8": {"Relu", "Clip"}}
"""Activations onnxruntime fuses into the conv before it (its ConvActivationFusion and the activation of its
blocked-layout fp32 conv, hard-swish included; int8 QDQ keeps only ReLU / clip, which requantization absorbs).
BatchNormalization and a constant Add (bias) fold into any conv / matmul."""
_INT8_OPS = _ONNX_CONV | _ONNX_FC | {
    "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Transpose", "Squeeze",
    "Unsqueeze", "Flatten", "Resize", "Relu", "Clip", "Sigmoid", "LeakyRelu", "Softmax", "Split", "Pad", "Slice",
    "Gather", "Identity", "QuantizeLinear", "DequantizeLinear"}
"""Ops onnxruntime runs in int8 between a DequantizeLinear / QuantizeLinear pair (its QDQ transformers): the pair
around them vanishes; around any other op it stays, as float requantization work."""
_NP_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
"""ONNX TensorProto data type -> bytes per element."""


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else a.i if a.type == 2 else a.f if a.type == 1 else default
    return default


def _onnx_cost(path: Path) -> GraphCost:
    from .onnx_shapes import resolve

    onnx = require("onnx", "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    res = resolve(model, str(path))
    shapes, types = res.shapes, res.elem_types

    ops = Counter(n.op_type for n in graph.node)
    quantized = any(op in _ONNX_QUANT for op in ops)
    precision = "int8" if quantized else "fp32"
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in graph.node for o in n.output}
    const = set(weights) | res.folded
    # weights reached through DequantizeLinear (QDQ), Transpose or Cast of a constant are still weights
    for n in graph.node:
        if n.op_type in ("DequantizeLinear", "Cast", "Transpose", "Identity") and n.input and n.input[0] in const:
            const.update(n.output)

    at_run_time = _run_time_shape_ops(model, res.folded, weights)

    def numel(name: str) -> int:
        return math.prod(shapes.get(name) or ())

    def nbytes(name: str) -> int:
        return numel(name) * (1 if quantized else _NP_SIZE.get(types.get(name, 1), 4))

    first_input = next((i for i in graph.input if i.name not in weights), None)
    layers, uncosted = [], []
    for i, node in enumerate(graph.node):
        op = node.op_type
        name = node.name or f"{op}_{i}"
        out = node.output[0] if node.output else ""
        acts_in = [x for x in node.input if x and x not in const]
        w_in = [x for x in node.input if x and x in const]
        flow = {"inputs": tuple(acts_in + [x for x in node.input if x in at_run_time]),
                "outputs": tuple(o for o in node.output if o)}
        if out in at_run_time:
            layers.append(LayerCost(name, op, "shape", kernel="shape", **flow))
            continue
        if out in const or op in _ONNX_FREE:
            layers.append(LayerCost(name, op, "free", kernel="free", **flow))
            continue
        src = producer.get(acts_in[0]) if acts_in else None
        kind, kernel = _onnx_kind(node, src, consumers, producer, precision, shapes)
        if op == "Pad" and _pad_into_conv(node, consumers, const - at_run_time):
            kind, kernel = "fused", "fused"
        if kind in ("fused", "free"):
            known = shapes.get(out) is not None and all(shapes.get(x) is not None for x in acts_in)
            # a fused op keeps its size: a layout pass may find the runtime cannot fuse it after all (ort_layout)
            layers.append(LayerCost(name, op, kind, elements=numel(out) if known else 0,
                                    act_bytes=sum(nbytes(x) for x in acts_in + [out]) if known else 0,
                                    out_shape=shapes.get(out) or (), kernel=kind, **flow))
            continue
        out_shape = shapes.get(out)
        missing = [x for x in acts_in + [out] if shapes.get(x) is None]
        if missing:
            raise BadInputError(f"{path}: cannot cost node {name!r} ({op}): the shape of {missing[0]!r} is unknown "
                                "even after folding the shape sub-graphs; export with static shapes")
        act_bytes = sum(nbytes(x) for x in acts_in) + sum(nbytes(o) for o in node.output if o)
        w_bytes = sum(nbytes(x) for x in w_in)
        macs, elements, positions, groups = 0, math.prod(out_shape), 0, 0
        if kind in COMPUTE_KINDS and op in _ONNX_CONV:
            w = node.input[3] if op == "QLinearConv" else node.input[1]
            wshape = shapes.get(w) or ()
            groups = _attr(node, "group", 1)
            k = tuple(wshape[2:])
            kind = classify_conv(groups, wshape[1] * groups, wshape[0], k)
            stride = max(_attr(node, "strides", [1]) or [1])
            kernel = _conv_kernel(kind, k, stride, groups, wshape[1])
            macs = math.prod(out_shape) * math.prod(wshape[1:])
            positions = _positions(kind, math.prod(out_shape[2:]), groups)
        elif kind == "fc":
            a = node.input[0]
            ka = shapes.get(a) or (0,)
            k = ka[-2] if _attr(node, "transA", 0) else ka[-1]
            macs = math.prod(out_shape) * k
        elif kind == "pool":
            elements = sum(numel(x) for x in acts_in)
        elif kind == "elementwise" and any(x and 0 < numel(x) < elements for x in node.input):
            kernel += "_broadcast"  # one operand per channel (squeeze-excite gating, a scale): another code path
        elif kind == "unknown":
            uncosted.append(f"{name} ({op})")
        layers.append(LayerCost(name, op, kind, int(macs), int(elements), int(w_bytes), int(act_bytes), out_shape,
                                kernel, int(positions), int(groups), **flow))
    in_shape = shapes.get(first_input.name) or () if first_input is not None else ()
    io = sum(numel(v.name) for v in list(graph.input) + list(graph.output) if v.name not in weights)
    flowing = {x for layer in layers for x in layer.inputs + layer.outputs}
    return GraphCost(str(path), "onnx", precision, in_shape, layers, uncosted, io_elements=io,
                     shapes={x: tuple(shapes[x]) for x in flowing if shapes.get(x) is not None},
                     graph_outputs=tuple(v.name for v in graph.output))


def _run_time_shape_ops(model, folded: set[str], weights: set[str]) -> set[str]:
    """Outputs of folded shape arithmetic that a runtime still evaluates on every run: with a symbolic input
    dimension it cannot fold ``Shape`` of anything that depends on the input, nor what is computed from it."""
    graph = model.graph
    symbolic = any(not (d.HasField("dim_value") and d.dim_value > 0) for i in graph.input if i.name not in weights
                   for d in i.type.tensor_type.shape.dim)
    if not symbolic:
        return set()
    dynamic = {i.name for i in graph.input if i.name not in weights}
    for n in graph.node:  # topological order: an output is dynamic when any input is
        if any(x in dynamic for x in n.input):
            dynamic.update(n.output)
    return {o for o in folded if o in dynamic}


def _onnx_kind(node, src, consumers: dict, producer: dict, precision: str, shapes: dict) -> tuple[str, str]:
    """(kind, kernel) of one ONNX node, fusions included; the conv kernel is completed by the caller."""
    op = node.op_type
    if op in _ONNX_CONV:
        return "conv", ""
    if op in _ONNX_FC:
        return "fc", "fc"
    if op == "DynamicQuantizeLinear":
        return "requant", "requant"
    if op in ("QuantizeLinear", "DequantizeLinear"):
        if op == "DequantizeLinear":
            users = consumers.get(node.output[0], [])
            neighbours_int8 = bool(users) and all(u.op_type in _INT8_OPS for u in users)
        else:
            neighbours_int8 = src is not None and src.op_type in _INT8_OPS
        return ("fused", "fused") if neighbours_int8 else ("requant", "requant")
    if precision == "fp32" and op in ("Sigmoid", "Mul"):
        part = _silu_part(node, producer, consumers)
        if part:
            return ("fused", "fused") if part == "gate" else ("activation", "act:silu")
    single = src is not None and len(consumers.get(node.input[0], [])) == 1
    base = src
    while base is not None and base.op_type == "DequantizeLinear":  # QDQ: look through the DQ to the kernel
        base = producer.get(base.input[0]) if base.input else None
        base = producer.get(base.input[0]) if base is not None and base.op_type == "QuantizeLinear" else base
    if single and base is not None and base.op_type in _ONNX_CONV | _ONNX_FC | {"FusedConv"}:
        if op in _CONV_FUSED_ACT[precision] or op == "BatchNormalization":
            return "fused", "fused"
        if op == "Add" and len([x for x in node.input if x]) == 2 and _is_const_like(node, producer):
            return "fused", "fused"  # bias add folded into the conv / matmul
    if precision == "fp32" and op in ("Add", "Sum") and _residual_into_conv(node, producer, consumers, shapes):
        return "fused", "fused"
    if (single and op in _CONV_FUSED_ACT["fp32"] and precision == "fp32" and src.op_type in ("Add", "Sum")
            and _residual_into_conv(src, producer, consumers, shapes)):
        return "fused", "fused"  # conv + residual add + activation: one kernel
    if op in _ONNX_ACT:
        return "activation", f"act:{_ONNX_ACT[op]}"
    if op in _ONNX_BINARY:
        return "elementwise", _ONNX_BINARY[op]
    if op in _ONNX_GLOBAL_POOL:
        return "pool", "pool:global"
    if op in _ONNX_REDUCE:
        return "pool", "pool:reduce"
    if op in _ONNX_WINDOW_POOL:
        return "pool", "pool:window"
    if op in _ONNX_DATA:
        return "data", f"copy:{_ONNX_DATA[op]}"
    return "unknown", f"unknown:{op}"


def _silu_part(node, producer: dict, consumers: dict) -> str:
    """``gate`` / ``mul`` when ``node`` is the sigmoid / the multiply of x * sigmoid(x) (SiLU, swish), which
    onnxruntime runs as one fp32 kernel; else ``""``."""
    if node.op_type == "Sigmoid":
        users = consumers.get(node.output[0], [])
        return "gate" if len(users) == 1 and _silu_part(users[0], producer, consumers) == "mul" else ""
    a, b = (list(node.input) + ["", ""])[:2]
    for x, gate in ((a, b), (b, a)):
        p = producer.get(gate)
        if p is not None and p.op_type == "Sigmoid" and p.input[0] == x and x:
            return "mul"
    return ""


def _residual_into_conv(node, producer: dict, consumers: dict, shapes: dict) -> bool:
    """A residual add onnxruntime folds into the fp32 conv producing one of its inputs (its blocked-layout conv
    accumulates onto the other input): the conv is dense or depthwise (grouped convs run another kernel) and the
    add is the only reader of its output."""
    for x in node.input:
        p = producer.get(x)
        if p is not None and p.op_type == "Conv" and len(consumers.get(x, [])) == 1:
            weight = shapes.get(p.input[1]) or ()
            if _attr(p, "group", 1) == 1 or (len(weight) > 1 and weight[1] == 1):  # dense, or one channel per group
                return True
    return False


def _pad_into_conv(node, consumers: dict, const: set[str]) -> bool:
    """A zero pad with constant pads whose only reader is a Conv: onnxruntime (its PadFusion) folds it into the
    conv's own padding. Pads computed at run time (a TF-"same" export with a dynamic batch) cannot be folded, nor
    (onnxruntime 1.32) a pad with an empty value input, as torch exports ``F.pad``: that Pad is a full copy of
    the tensor on every run."""
    users = consumers.get(node.output[0], [])
    mode = _attr(node, "mode", b"constant")
    pads = node.input[1] if len(node.input) > 1 else ""
    # onnxruntime 1.32 folds no pad whose optional value input is present but empty (as torch exports F.pad)
    value_ok = len(node.input) < 3 or node.input[2] in const
    return (len(users) == 1 and users[0].op_type == "Conv" and mode in (b"constant", "constant")
            and pads in const and value_ok)


def _is_const_like(node, producer: dict) -> bool:
    """One input of ``node`` is an initializer (no producer) or a Constant / DequantizeLinear of one."""
    for x in node.input[1:2] + node.input[0:1]:
        p = producer.get(x)
        if p is None or p.op_type == "Constant" or (p.op_type == "DequantizeLinear" and p.input[0] not in producer):
            return True
    return False


def _positions(kind: str, pixels: int, groups: int) -> int:
    """Output pixels of a convolution, times its groups when it is a grouped (not depthwise) conv."""
    return pixels * (groups if kind == "conv" else 1)


GROUP_WIDTHS = (4, 8, 16, 32, 64)
"""Channels per group a grouped-conv kernel name is rounded to: runtimes pick their code by the group width
(onnxruntime's blocked fp32 conv takes groups of 16, 32, 64 channels; 8 go through a per-group GEMM, twice as
slow per MAC), so each width is a kernel of its own."""


def _conv_kernel(kind: str, k: tuple[int, ...], stride: int, groups: int = 1, width: int = 0) -> str:
    """Kernel name of a convolution: runtimes pick different code per kernel size, stride and grouping (a grouped
    conv's name ends in its group width rounded to ``GROUP_WIDTHS``, e.g. ``gconv3x3s1w8``)."""
    if kind == "pointwise":
        return "pointwise" if stride == 1 else "pointwise_s2"
    size = "x".join(str(d) for d in k)
    if kind == "conv" and groups > 1:
        near = min(GROUP_WIDTHS, key=lambda g: (abs(math.log2(max(width, 1) / g)), g))
        return f"gconv{size}s{min(stride, 2)}w{near}"
    return f"{kind}{size}s{min(stride, 2)}"


# -------------------------------------------------------------------------------------------------- TFLite

_TFL_ACT = {"RELU": "relu", "RELU6": "relu", "RELU_N1_TO_1": "relu", "RELU_0_TO_1": "relu", "LEAKY_RELU": "relu",
            "PRELU": "relu", "LOGISTIC": "sigmoid", "HARD_SWISH": "hardswish", "TANH": "tanh", "GELU": "gelu",
            "SOFTMAX": "softmax", "EXP": "other", "SQRT": "other", "RSQRT": "other", "POW": "other", "LOG": "other",
            "ABS": "other", "NEG": "other", "CAST": "other", "ELU": "other", "QUANTIZE": "requant",
            "DEQUANTIZE": "requant"}
_TFL_BINARY = {"ADD": "add", "SUB": "add", "MUL": "mul", "DIV": "mul", "MAXIMUM": "add", "MINIMUM": "add",
               "SQUARED_DIFFERENCE": "mul", "ADD_N": "add", "SELECT": "add", "SELECT_V2": "add", "EQUAL": "add",
               "LESS": "add", "GREATER": "add"}
_TFL_GLOBAL_POOL = {"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"}
_TFL_WINDOW_POOL = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"}
_TFL_DATA = {"TRANSPOSE": "transpose", "CONCATENATION": "concat", "SPLIT": "split", "SPLIT_V": "split",
             "SLICE": "slice", "STRIDED_SLICE": "slice", "PAD": "pad", "PADV2": "pad", "MIRROR_PAD": "pad",
             "GATHER": "slice", "RESIZE_BILINEAR": "resize", "RESIZE_NEAREST_NEIGHBOR": "resize",
             "DEPTH_TO_SPACE": "transpose", "SPACE_TO_DEPTH": "transpose", "TILE": "concat", "BROADCAST_TO": "concat",
             "PACK": "concat", "UNPACK": "split"}
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
    for op in sub.operators:  # fp16 / int8 weights go through DEQUANTIZE to fp32: that output is still a weight
        if codes[op.opcodeIndex] == "DEQUANTIZE" and op.inputs[0] in const:
            dequant_of_const[op.outputs[0]] = op.inputs[0]
    const |= set(dequant_of_const)

    def shape(i: int) -> tuple[int, ...]:
        s = tensors[i].shape
        return tuple(max(int(d), 1) for d in s) if s is not None else ()  # a dynamic batch (-1) is taken as 1

    def nbytes(i: int) -> int:
        return math.prod(shape(i)) * _TFL_SIZE.get(tensors[i].type, 4)

    quantized = any(tensors[i].type in (9, 3) for op in sub.operators for i in op.inputs if i >= 0 and i not in const
                    and codes[op.opcodeIndex] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    layers, uncosted = [], []
    for n, op in enumerate(sub.operators):
        code = codes[op.opcodeIndex]
        ins = [i for i in op.inputs if i >= 0]
        outs = [i for i in op.outputs if i >= 0]
        name = tensors[outs[0]].name.decode() if outs and tensors[outs[0]].name else f"{code}_{n}"
        if code in _TFL_FREE or (outs and outs[0] in dequant_of_const):
            layers.append(LayerCost(name, code, "free", kernel="free"))
            continue
        acts = [i for i in ins if i not in const]
        wts = [i for i in ins if i in const]
        out_shape = shape(outs[0]) if outs else ()
        act_bytes = sum(nbytes(i) for i in acts + outs)
        w_bytes = sum(nbytes(dequant_of_const.get(i, i)) for i in wts)
        macs, elements, positions = 0, math.prod(out_shape) if out_shape else 0, 0
        pixels = math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1  # NHWC
        opts = op.builtinOptions
        stride = max(getattr(opts, "strideH", 1) or 1, getattr(opts, "strideW", 1) or 1)
        if code == "CONV_2D":  # weights [O, kh, kw, I/groups]
            w = shape(ins[1])
            cin = shape(ins[0])[-1]
            groups = cin // w[3] if w[3] else 1
            kind = classify_conv(groups, cin, w[0], w[1:3])
            kernel = _conv_kernel(kind, w[1:3], stride, groups, w[3])
            macs = math.prod(out_shape) * math.prod(w[1:])
            positions = _positions(kind, pixels, groups)
        elif code == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, C*multiplier]
            w = shape(ins[1])
            kind, macs = "depthwise", math.prod(out_shape) * w[1] * w[2]
            kernel = _conv_kernel(kind, w[1:3], stride)
            positions = pixels
        elif code in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            kind, kernel = "fc", "fc"
            macs = math.prod(out_shape) * shape(ins[0])[-1]
        elif code in ("QUANTIZE", "DEQUANTIZE"):
            kind, kernel = "requant", "requant"
        elif code in _TFL_ACT:
            kind, kernel = "activation", f"act:{_TFL_ACT[code]}"
        elif code in _TFL_BINARY:
            kind, kernel = "elementwise", _TFL_BINARY[code]
        elif code in _TFL_GLOBAL_POOL:
            kind, kernel, elements = "pool", "pool:global", sum(math.prod(shape(i)) for i in acts)
        elif code in _TFL_WINDOW_POOL:
            kind, kernel, elements = "pool", "pool:window", sum(math.prod(shape(i)) for i in acts)
        elif code in _TFL_DATA:
            kind, kernel = "data", f"copy:{_TFL_DATA[code]}"
        else:
            kind, kernel = "unknown", f"unknown:{code}"
            uncosted.append(f"{name} ({code})")
        layers.append(LayerCost(name, code, kind, int(macs), int(elements), int(w_bytes), int(act_bytes), out_shape,
                                kernel, int(positions)))
    inp = sub.inputs[0] if sub.inputs is not None and len(sub.inputs) else -1
    io = sum(math.prod(shape(i)) for i in list(sub.inputs if sub.inputs is not None else [])
             + list(sub.outputs if sub.outputs is not None else []) if i >= 0)
    return GraphCost(str(path), "tflite", "int8" if quantized else "fp32", shape(inp) if inp >= 0 else (), layers,
                     uncosted, io_elements=io)


def _has_data(buffer) -> bool:
    """A constant tensor's buffer holds bytes inline, or (models over 2 GB) an offset and size."""
    return (buffer.data is not None and len(buffer.data) > 0) or bool(getattr(buffer, "size", 0))
