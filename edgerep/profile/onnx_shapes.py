"""Every tensor shape of an ONNX graph, resolved statically, so its cost can be read from the file alone.

ONNX shape inference alone stops at the first shape *computed* in the graph: a TF-"same" padding export builds
its pads with Shape -> Gather -> Sub -> ... -> Concat -> Pad, so inference knows neither the pads nor anything
after them, and a cost walker that takes missing shapes as zero under-counts the rest of the network silently.
Here the graph is resolved in rounds: infer shapes (with data propagation), then evaluate every node whose
inputs are all known values (initializers, constants, and ``Shape`` of a tensor whose shape is now known) with
onnx's reference evaluator, turn its outputs into constants, and infer again, until nothing new folds.

Ops outside the ONNX standard (onnxruntime's com.microsoft QOperator kernels: QLinearAdd,
QLinearGlobalAveragePool, QGemm, ...) have no shape functions in onnx; if any shape is still unknown after
folding, the graph has such ops and only data inputs (float / int8, never an integer tensor that could be a
shape), and onnxruntime is installed, the graph is run once on zeros with every intermediate tensor as an
output and the shapes are read off (an evaluation on the known input shape, like the folding).

A symbolic batch dimension (axis 0) is taken as 1; any other symbolic input dimension is a BadInputError (its
size decides the cost, and only the user knows it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError

MAX_FOLD_ELEMENTS = 1 << 16
"""Values larger than this are not folded: shape arithmetic is small, folding weights would only waste memory."""
NEVER_FOLD = {"QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
              "RandomUniformLike", "Multinomial"}
_DATA_INPUTS = {1, 2, 3, 10}
"""float, uint8, int8, float16: inputs that are data, whose values cannot change a shape (an int64 input may)."""


@dataclass
class Resolved:
    """The graph with shape sub-graphs folded: shapes per tensor (None = unknown), and which nodes were folded."""

    model: object  # onnx.ModelProto
    shapes: dict[str, tuple[int, ...] | None]
    elem_types: dict[str, int]
    folded: set[str]  # output names of nodes evaluated away (shape arithmetic)


def resolve(model, where: str) -> Resolved:
    """Fix the batch to 1, then alternate shape inference and constant folding until shapes stop changing."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    for inp in graph.input:
        if inp.name in init_names:
            continue
        for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if axis != 0:
                raise BadInputError(
                    f"{where}: input {inp.name!r} has a symbolic dimension {dim.dim_param or '?'!r} at axis {axis}; "
                    "its size decides the cost: export with a static input size (only the batch may be dynamic)")
            dim.Clear()
            dim.dim_value = 1
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                                     if math.prod(t.dims) <= MAX_FOLD_ELEMENTS}
    opsets = {o.domain: o.version for o in model.opset_import}
    folded: set[str] = set()
    for _ in range(64):  # each round folds at least one more level of the shape sub-graphs
        shapes, types = _infer(model, where)
        new = _fold_round(graph, values, shapes, opsets, folded)
        if not new:
            unknown = any(shapes.get(o) is None for n in graph.node for o in n.output if o and o not in folded)
            contrib = any(n.domain not in ("", "ai.onnx") for n in graph.node)
            if unknown and contrib and all(types.get(i.name) in _DATA_INPUTS for i in graph.input):
                _run_shapes(model, shapes, types)
            return Resolved(model, shapes, types, folded)
        for name in new:
            t = numpy_helper.from_array(np.asarray(values[name]), name)
            graph.initializer.append(t)
    raise BadInputError(f"{where}: shape sub-graphs did not resolve after 64 folding rounds")


def _infer(model, where: str) -> tuple[dict[str, tuple[int, ...] | None], dict[str, int]]:
    import onnx

    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise BadInputError(f"{where}: ONNX shape inference failed ({str(exc).splitlines()[0]}); "
                            "check the file with onnx.checker") from None
    g = inferred.graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        types[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
        else:
            shapes.setdefault(vi.name, None)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        types[t.name] = t.data_type
    return shapes, types


def _fold_round(graph, values: dict, shapes: dict, opsets: dict, folded: set[str]) -> list[str]:
    """Evaluate every not-yet-folded node whose inputs are known values; return the new value names."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    new: list[str] = []
    for node in graph.node:
        if not node.output or node.output[0] in folded or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in NEVER_FOLD:
            continue
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is None:
                continue
            out = [numpy_helper.to_array(attr.t)]
        elif node.op_type == "Shape":
            shape = shapes.get(node.input[0])
            if shape is None:
                continue
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            end = next((a.i for a in node.attribute if a.name == "end"), None)
            out = [np.array(shape[start:end], dtype=np.int64)]
        elif node.op_type == "Size" and shapes.get(node.input[0]) is not None:
            out = [np.array(math.prod(shapes[node.input[0]]), dtype=np.int64)]
        else:
            ins = [x for x in node.input if x]
            if not ins or any(x not in values for x in ins):
                continue
            try:
                ev = ReferenceEvaluator(node, opsets={"": opsets.get("", opsets.get("ai.onnx", 17))})
                out = ev.run(None, {x: values[x] for x in ins})
            except Exception:  # an op the reference evaluator lacks stays unfolded (and is costed if it must be)
                continue
        if any(np.asarray(o).size > MAX_FOLD_ELEMENTS for o in out):
            continue
        for name, value in zip(node.output, out):
            values[name] = np.asarray(value)
            new.append(name)
        folded.update(node.output)
    if new:  # folded nodes now read constants: drop them so inference does not re-derive them
        keep = [n for n in graph.node if not (n.output and n.output[0] in folded)]
        del graph.node[:]
        graph.node.extend(keep)
    return new


def _run_shapes(model, shapes: dict, types: dict) -> None:
    """Fill unknown shapes by running the graph once in onnxruntime (if installed) with every tensor an output."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    import onnx

    m = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for o in node.output:
            if o and o not in known:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
                known.add(o)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feed = {}
        for i in session.get_inputs():
            dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
                     "tensor(int64)": np.int64, "tensor(float16)": np.float16}.get(i.type, np.float32)
            feed[i.name] = np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], dtype)
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feed)
    except Exception:  # the caller reports the first op whose shape is still unknown
        return
    for name, value in zip(names, values):
        if shapes.get(name) is None and hasattr(value, "shape"):
            shapes[name] = tuple(int(d) for d in value.shape)
