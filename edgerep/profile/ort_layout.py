"""onnxruntime's fp32 blocked layout (NCHWc) on x86, applied to a graph cost: which convolutions run blocked, and
where the runtime copies tensors between layouts.

On a CPU where MLAS has NCHWc kernels (block ``B`` = 16 channels with AVX-512, 8 with AVX2), onnxruntime's
``NchwcTransformer`` (graph optimization level 3, the default) rewrites an fp32 graph. The rules below are the ones
onnxruntime 1.32 applies, read off its own optimized graphs (tests/profile/test_ort_layout.py checks the
emulation against them):

- a dense conv runs blocked, reading its NCHW input directly when ``cin < B`` (an RGB stem, a squeeze-excite
  expand) and a blocked input when ``cin`` is a multiple of 4; a depthwise conv runs blocked when its channels
  are a multiple of 4. Channel counts are padded up to whole blocks and the padding is computed too (24 channels
  cost 32 on AVX-512): ``LayerCost.work``. A grouped conv runs blocked only with whole blocks per group; it and
  the convs with other channel counts run MLAS's plain NCHW code, named ``..._nchw``.
- MaxPool / AveragePool (channels a multiple of ``B``) run blocked; Relu / Sigmoid / Tanh / x*sigmoid(x), Add /
  Sum / Mul of blocked tensors onnxruntime can show have one shape, a channel Concat of block-aligned tensors,
  global pools and BatchNormalization stay blocked when their input is; an Add whose other input is a blocked
  conv (without an activation, read by nothing else) folds into that conv, and a Relu / Sigmoid / Tanh after
  that into it too. After a pad computed at run time onnxruntime cannot show shapes equal: such adds run as
  ops of their own (still blocked).
- ``ReorderInput`` converts a NCHW tensor the first time a blocked op reads it; ``ReorderOutput`` converts a
  blocked tensor back once when anything else reads it (any other op, a reshape, a ``Shape`` of a TF-"same"
  export, a graph output). Each is a full copy of the tensor: squeeze-excite multiplies, pads, concats and
  slices of ghost modules pay them around every use.

``nchwc_layout`` returns the cost as onnxruntime runs it: conv kernels renamed, the padded work in
``LayerCost.work``, fusions onnxruntime cannot make un-fused, and one ``reorder`` layer (kind ``data``) per
conversion. MACs are unchanged (``GraphCost.macs`` stays the model's own count).
``probe_block`` asks the local onnxruntime which block it uses (0: no blocked layout, e.g. on ARM).
"""

from __future__ import annotations

import dataclasses
import math

from .graph_cost import GraphCost, LayerCost

_BLOCKED_ACT = {"Relu", "Sigmoid", "Tanh"}
"""Activations onnxruntime's NCHWc pass runs on (and folds into) blocked tensors; others read NCHW."""
_BLOCKED_BINARY = {"Add", "Sum", "Mul"}
_BLOCKED_POOL = {"MaxPool", "AveragePool"}
_BLOCKED_GLOBAL = {"GlobalAveragePool", "GlobalMaxPool"}
CONV_OPS = {"Conv"}
ALIGN = 4
"""Channel counts onnxruntime pads up to a whole block are multiples of this (other depthwise / dense convs with
``cin >= block`` run in NCHW)."""
_ACT_KERNEL = {"Relu": "relu", "Clip": "relu", "LeakyRelu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh",
               "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish"}


@dataclasses.dataclass
class _Conv:
    single: bool
    """Nothing but the next op reads the conv's output."""
    act: bool = False
    add: bool = False


class _State:
    """What the pass knows about each tensor while it walks the graph in order."""

    def __init__(self, cost: GraphCost) -> None:
        self.shapes = cost.shapes
        self.root: dict[str, str] = {}
        """A folded op's output is the tensor of the op it folds into."""
        self.blocked: dict[str, int] = {}
        """Tensors held in the blocked layout -> their logical channel count."""
        self.conv_of: dict[str, _Conv] = {}
        """Outputs of blocked convs -> what is folded into them so far."""
        self.unfused: set[str] = set()
        """Outputs of residual adds graph_cost folded but onnxruntime cannot."""
        self.readers: dict[str, int] = {}
        for layer in cost.layers:
            for x in layer.inputs:
                self.readers[x] = self.readers.get(x, 0) + 1
        self.needs_nchw: set[str] = set()
        self.reordered_in: set[str] = set()
        self.run_time: set[str] = {x for layer in cost.layers if layer.kind == "shape" for x in layer.outputs}
        self.unknown: set[str] = set()
        """Tensors whose height and width onnxruntime's own shape inference cannot know: everything after a pad
        computed at run time (a TF-"same" export with a dynamic batch), though graph_cost folds them."""

    def provably_same(self, a: str, b: str) -> bool:
        """onnxruntime can show two blocked tensors have one shape (else it adds them through reshapes, and
        multiplies them in NCHW): their shapes are equal and known to its shape inference."""
        return self.shapes.get(a) == self.shapes.get(b) and not {a, b} & self.unknown

    def track_unknown(self, layer: LayerCost) -> None:
        if (layer.op == "Pad" and set(layer.inputs[1:]) & self.run_time) or (
                set(layer.inputs) & self.unknown and layer.kind != "pool"):
            self.unknown.update(layer.outputs)

    def r(self, x: str) -> str:
        return self.root.get(x, x)

    def channels(self, x: str) -> int:
        s = self.shapes.get(x) or ()
        return s[1] if len(s) == 4 else 0


def nchwc_layout(cost: GraphCost, block: int) -> GraphCost:
    """``cost`` as onnxruntime's CPU provider runs an fp32 ONNX graph with NCHWc block ``block`` (see the module
    docstring); the cost unchanged for other graphs or ``block`` < 2."""
    if block < 2 or cost.format != "onnx" or cost.precision != "fp32" or not cost.shapes:
        return cost
    st = _State(cost)
    out: list[LayerCost] = []

    def read_nchw(xs) -> None:
        st.needs_nchw.update(st.r(x) for x in xs if st.r(x) in st.blocked)

    def read_blocked(x: str) -> None:
        if st.r(x) not in st.blocked and x not in st.reordered_in:
            st.reordered_in.add(x)
            out.append(_reorder("in", x, st.shapes))

    for layer in cost.layers:
        ins = layer.inputs
        st.track_unknown(layer)
        if layer.op in CONV_OPS and layer.groups:
            runs_blocked, reads_input = _conv_blocked(layer, st.channels(ins[0]) if ins else 0, block)
            if not runs_blocked:
                read_nchw(ins)
                out.append(dataclasses.replace(layer, kernel=layer.kernel + "_nchw"))
                continue
            if reads_input:
                read_blocked(ins[0])
            else:
                read_nchw(ins[:1])
            y = layer.outputs[0]
            out.append(dataclasses.replace(layer, work=_padded_work(layer, st.channels(ins[0]), block)))
            st.blocked[y] = st.channels(y)
            st.conv_of[y] = _Conv(st.readers.get(y, 0) == 1)
            continue
        if layer.op in ("Add", "Sum") and len(ins) == 2 and layer.kind in ("fused", "elementwise") \
                and not layer.weight_bytes:
            out.append(_add(layer, ins, st, read_nchw))
            continue
        if layer.kind == "fused":
            out.append(_fused(layer, ins, st, read_nchw))
            continue
        if layer.kind == "activation" and ins:
            out.append(_activation(layer, ins, st, read_nchw))
            continue
        if ins and all(st.r(x) in st.blocked for x in ins) and _stays_blocked(layer, ins, st, block):
            y = layer.outputs[0]
            st.blocked[y] = st.channels(y) if layer.op == "Concat" else st.blocked[st.r(ins[0])]
            out.append(layer)
            continue
        if layer.op in _BLOCKED_POOL and ins and st.channels(ins[0]) % block == 0:
            read_blocked(ins[0])
            st.blocked[layer.outputs[0]] = st.channels(ins[0])
            out.append(layer)
            continue
        read_nchw(ins)
        out.append(layer)
    read_nchw(cost.graph_outputs)
    out += [_reorder("out", x, st.shapes) for x in st.blocked if x in st.needs_nchw]
    notes = cost.notes + [f"onnxruntime fp32 blocked layout (NCHWc, block {block}): {len(st.reordered_in)} "
                          f"tensors reordered in, {len(st.needs_nchw)} out"]
    return dataclasses.replace(cost, layers=out, notes=notes)


def _conv_blocked(layer: LayerCost, cin: int, block: int) -> tuple[bool, bool]:
    """(the conv runs blocked, it reads its input blocked), as onnxruntime 1.32's NchwcTransformer decides."""
    groups = layer.groups
    cout = layer.out_shape[1] if len(layer.out_shape) == 4 else 0
    if not cin or not cout:
        return False, False
    if groups > 1 and not groups == cin == cout:  # grouped, not depthwise: whole blocks per group only
        ok = (cin // groups) % block == 0 and (cout // groups) % block == 0
        return ok, ok
    if groups == 1 and cin < block:
        return True, False  # reads the NCHW input as it is (an RGB stem, a squeeze-excite expand)
    ok = cin % ALIGN == 0  # padded up to whole blocks, from a multiple of 4 only
    return ok, ok


def _padded_work(layer: LayerCost, cin: int, block: int) -> int:
    """The MACs a blocked conv computes: channels padded up to whole blocks (a dense conv's input channels only
    when it reads a blocked input)."""
    cout = layer.out_shape[1]
    scale = _pad(cout, block) / cout
    if layer.groups == 1 and cin >= block:
        scale *= _pad(cin, block) / cin
    return round(layer.macs * scale) if scale != 1 else 0


def _pad(c: int, block: int) -> int:
    return -(-c // block) * block


def _stays_blocked(layer: LayerCost, ins: tuple[str, ...], st: _State, block: int) -> bool:
    """An op reading only blocked tensors that onnxruntime keeps in the blocked layout."""
    op = layer.op
    if op in _BLOCKED_ACT or op == "BatchNormalization":
        return True
    if op in _BLOCKED_BINARY:  # same shape, no constant operand (a constant has no blocked form)
        return layer.weight_bytes == 0 and len(ins) > 1 and all(st.provably_same(ins[0], x) for x in ins[1:])
    c = [st.blocked[st.r(x)] for x in ins]
    if op == "Concat":
        spatial = {(s[0], *s[2:]) for s in (st.shapes.get(x) or () for x in ins)}
        return len(spatial) == 1 and sum(c) == st.channels(layer.outputs[0]) and all(x % block == 0 for x in c)
    return (op in _BLOCKED_GLOBAL or op in _BLOCKED_POOL) and c[0] % block == 0


def _fused(layer: LayerCost, ins, st: _State, read_nchw) -> LayerCost:
    """A single-input layer ``graph_cost`` folded into the op before it (BatchNorm, an activation): still folded
    where onnxruntime folds it; the activation after a residual add onnxruntime could not fold is an op of its
    own."""
    if not ins or not layer.outputs:
        return layer
    src, y = st.r(ins[0]), layer.outputs[0]
    if ins[0] in st.unfused:
        return _activation(layer, ins, st, read_nchw)
    conv = st.conv_of.get(src)
    if conv is not None:
        if layer.op == "BatchNormalization":
            conv.single = st.readers.get(y, 0) == 1
        else:
            conv.act = True
    st.root[y] = src
    return layer


def _activation(layer: LayerCost, ins, st: _State, read_nchw) -> LayerCost:
    """An activation: folded into the blocked conv it follows when that conv has none yet and nothing else reads
    its output (onnxruntime's NCHWc pass does this after folding a residual add), else an op of its own."""
    src, y = st.r(ins[0]), layer.outputs[0]
    if layer.kernel == "act:silu":  # x * sigmoid(x): both halves stay blocked, fused after the layout pass
        if src in st.blocked and st.r(ins[-1]) == src:
            st.blocked[y] = st.blocked[src]
        else:
            read_nchw(ins)
        return layer
    conv = st.conv_of.get(src)
    if layer.op in _BLOCKED_ACT and conv is not None and not conv.act and st.readers.get(ins[0], 0) == 1:
        conv.act = True
        st.root[y] = src
        return dataclasses.replace(layer, kind="fused", kernel="fused")
    if src in st.blocked and layer.op in _BLOCKED_ACT:
        st.blocked[y] = st.blocked[src]
    else:
        read_nchw(ins)
    if layer.kind == "activation":
        return layer
    return dataclasses.replace(layer, kind="activation", kernel=f"act:{_ACT_KERNEL.get(layer.op, 'other')}")


def _add(layer: LayerCost, ins, st: _State, read_nchw) -> LayerCost:
    """A residual add of two tensors: folded into a blocked conv producing one of them (its only reader, without
    an activation) when the other is blocked alike; else an add of its own, blocked or not."""
    a, b = (st.r(x) for x in ins)
    y = layer.outputs[0]
    blocked = a in st.blocked and b in st.blocked and st.blocked[a] == st.blocked[b]
    for x, other in ((a, b), (b, a)):
        conv = st.conv_of.get(x)
        if blocked and st.provably_same(*ins) and conv is not None and conv.single and not conv.act \
                and not conv.add:
            conv.add = True
            st.root[y] = x
            return dataclasses.replace(layer, kind="fused", kernel="fused")
    st.unfused.add(y)
    if blocked:  # through reshapes to the blocked shape when onnxruntime cannot show the shapes are equal
        st.blocked[y] = st.blocked[a]
    else:
        read_nchw(ins)
    return dataclasses.replace(layer, kind="elementwise", kernel="add")


def _reorder(direction: str, x: str, shapes: dict) -> LayerCost:
    """A ``ReorderInput`` / ``ReorderOutput`` of tensor ``x``: one kernel, ``reorder`` (both copy every element
    once between the layouts, at the same cost per element on onnxruntime's profile)."""
    n = math.prod(shapes.get(x) or (0,))
    op = f"Reorder{direction.capitalize()}put"
    return LayerCost(f"{op}:{x}", op, "data", elements=n, act_bytes=8 * n, out_shape=tuple(shapes.get(x) or ()),
                     kernel="reorder", inputs=(x,), outputs=(x,))


def probe_block() -> int:
    """The NCHWc block of the local onnxruntime (0: it has no blocked layout here): a one-channel conv runs
    blocked with its output padded to one whole block, so the block is the padded weight's channel count."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.log_severity_level = 3  # it warns that a blocked graph is tied to this machine: that is the point
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath).graph
    weights = {t.name: t.dims for t in optimized.initializer}
    for node in optimized.node:
        if "nchwc" in node.domain and node.op_type == "Conv" and node.input[1] in weights:
            return int(weights[node.input[1]][0])
    return 0
