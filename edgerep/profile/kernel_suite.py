"""edgerep's kernel suite: single-kernel and small-block ONNX models over sampled shapes, to time on a device.

Each spec is one kernel the cost model tells apart (``graph_cost`` kernel names: ``conv3x3s2``,
``depthwise5x5s1``, ``pointwise``, ``fc``, ``act:hardswish``, ``mul``, ``pool:global``, ``copy:concat``, ...) at
one shape, plus two blocks where runtimes fuse or chain small ops (squeeze-excite; an inverted residual). The
models are written op by op with ``onnx.helper`` (no torch, no download), in fp32; int8 files are the same graphs
quantized to QDQ by onnxruntime's own quantizer, the way users make them. Shapes are sampled from a seeded
generator, so a calibration is reproducible and resumable: spec ``i`` is the same model every time.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import require
from .graph_cost import GROUP_WIDTHS

CHANNELS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 960)
SIZES = (7, 10, 14, 20, 28, 40, 56, 80, 112)
SAMPLES_X = {"gconv3x3s1": 3, "gconv3x3s2": 2}
"""Grouped convs get more samples: graph_cost names one kernel per group width (``GROUP_WIDTHS``)."""
DEPTHS = (1, 2, 4)
"""Copies of a shape-preserving kernel in one suite model: the time per added copy is the kernel's own cost,
the rest is the model's per-run cost, which the fit must not charge to every kernel of a network."""
STEM_SHARE = {"conv3x3s2": 0.2, "conv7x7s2": 0.7}
"""Share of the samples that read an image (3 channels), as network stems do (7x7 convs are mostly stems)."""
STEM_SIZES = (96, 128, 160, 192, 224)
MAX_MACS = 1.5e8
"""Larger kernels only slow the calibration down: time grows linearly with MACs well before this."""

KERNELS = (
    "conv3x3s1", "conv3x3s2", "gconv3x3s1", "gconv3x3s2", "pointwise", "depthwise3x3s1", "depthwise3x3s2",
    "depthwise5x5s1",
    "depthwise5x5s2", "fc", "act:relu", "act:hardswish", "act:sigmoid", "act:hardsigmoid", "act:gelu",
    "act:tanh", "add", "mul", "mul_broadcast", "pool:global", "pool:reduce", "pool:window", "copy:concat", "copy:pad",
    "copy:transpose", "copy:split", "copy:slice", "copy:resize", "block:se", "block:mbconv", "shape",
    "act:silu", "conv7x7s2", "pointwise_s2",
)

LITERT_LEFT_OUT = {
    "shape": "a .tflite file has static shapes: no shape arithmetic runs at inference",
    "pool:reduce": "a mean over H and W is the MEAN op of global pooling in TFLite (timed as pool:global)",
    "act:relu": "litert-torch fuses a ReLU into the conv before it (a RELU it leaves alone, 4 in the zoo's fp32 "
                "resnet18, is costed with another activation's regressor, and the prediction says so)",
    "act:silu": "litert-torch writes x * sigmoid(x) as LOGISTIC + MUL (timed as act:sigmoid and mul)",
    "act:hardsigmoid": "litert-torch writes it as ADD (fused ReLU6) + MUL (timed as add and mul)",
    "copy:split": "litert-torch writes a split as SLICE ops (timed as copy:slice)",
}
"""Kernels the LiteRT suite leaves out: they have no op of their own in a litert-torch file."""
SUITES = {"onnxruntime": KERNELS, "litert": tuple(k for k in KERNELS if k not in LITERT_LEFT_OUT)}
"""The suite kernels of each runtime ``edgerep calibrate`` calibrates."""

CHAINED = frozenset(("conv3x3s1", "gconv3x3s1", "pointwise", "depthwise3x3s1", "depthwise5x5s1", "act:relu",
                     "act:hardswish", "act:sigmoid", "act:hardsigmoid", "act:gelu", "act:tanh", "add", "mul",
                     "mul_broadcast", "block:se", "shape", "act:silu"))
"""Kernels whose output has their input's shape run ``depth`` (``DEPTHS``) times in a row with distinct weights:
closer to a network than one op on hot caches, and models of one kernel at several depths tell its cost per copy
from the per-run cost of the session."""


CONTEXT = {"gconv3x3s1": 1.0, "gconv3x3s2": 1.0, "mul_broadcast": 1.0, "block:se": 1.0, "pool:window": 1.0,
           "pool:global": 0.0, "pool:reduce": 0.0, "copy:concat": 2.0, "copy:pad": 1.0, "copy:transpose": 0.0,
           "copy:split": 0.5, "copy:slice": 0.5, "copy:resize": 1.0}
"""Kernels timed between depthwise 3x3 convs, as they sit in a network (value: output channels per input channel
for the trailing conv, 0 when the output is no NCHW image). A runtime with its own conv layout (onnxruntime's
blocked NCHWc in fp32) converts the tensor before and after every op outside that layout, and an int8 graph
requantizes there: that cost belongs to the kernel, and a kernel fed straight from the model input never pays it.
The depthwise convs are cheap next to copies, so the kernel's own time still dominates the model."""


@dataclass(frozen=True)
class KernelSpec:
    """One suite model: a kernel at one shape (batch 1, NCHW)."""

    kernel: str
    cin: int
    cout: int
    size: int
    act: str = "none"
    depth: int = 1
    width: int = 0
    """Channels per group (grouped convs only)."""

    @property
    def id(self) -> str:
        group = f"_g{self.width}" if self.width else ""
        return f"{self.kernel.replace(':', '-')}_c{self.cin}-{self.cout}_h{self.size}_{self.act}_d{self.depth}{group}"

    def to_dict(self) -> dict:
        return asdict(self)


def sample_specs(n_per_kernel: int, seed: int = 0, kernels: tuple[str, ...] = KERNELS) -> list[KernelSpec]:
    """``n_per_kernel`` shapes per kernel, round-robin over kernels so that a budget cut keeps every kernel."""
    rng = random.Random(seed)
    per: dict[str, list[KernelSpec]] = {}
    for kernel in kernels:
        specs: list[KernelSpec] = []
        tries = 0
        want = n_per_kernel * SAMPLES_X.get(kernel, 1)
        while len(specs) < want and tries < 200 * SAMPLES_X.get(kernel, 1):
            tries += 1
            cin, cout, size = rng.choice(CHANNELS), rng.choice(CHANNELS), rng.choice(SIZES)
            if kernel == "shape":  # tiny tensors: the op launches are what this kernel measures, not the pads
                cin, size = min(cin, 32), min(size, 14)
            if kernel in STEM_SHARE and rng.random() < STEM_SHARE[kernel]:
                cin, size = 3, rng.choice(STEM_SIZES)  # an RGB stem: im2col over 3 channels, a full-size image
            act = rng.choice(("none", "relu")) if kernel.startswith(("conv", "gconv", "point")) else "none"
            depth = rng.choice(DEPTHS) if kernel in CHAINED else 1
            width = GROUP_WIDTHS[len(specs) % len(GROUP_WIDTHS)] if kernel.startswith("gconv") else 0
            if width and (cin % width or cin == width):
                continue  # a grouped conv needs two or more whole groups
            spec = KernelSpec(kernel, cin, cout if kernel in WIDTH_CHANGING else cin,
                              size, act, depth, width)
            if _macs(spec) <= MAX_MACS and spec not in specs:
                specs.append(spec)
        per[kernel] = specs
    return [per[k][i] for i in range(max(map(len, per.values()), default=0)) for k in kernels if i < len(per[k])]


WIDTH_CHANGING = ("conv3x3s2", "conv7x7s2", "pointwise", "pointwise_s2", "fc")


def _kernel_size(kernel: str) -> int:
    return 7 if "7x7" in kernel else 3 if "3x3" in kernel else 5 if "5x5" in kernel else 1


def _macs(s: KernelSpec) -> float:
    return _macs_one(s) * s.depth


def _macs_one(s: KernelSpec) -> float:
    k = _kernel_size(s.kernel)
    stride = 2 if s.kernel.endswith("s2") else 1
    hw = (s.size // stride) ** 2
    if s.kernel.startswith(("conv", "pointwise")):
        return hw * s.cin * s.cout * k * k
    if s.kernel.startswith("gconv"):
        return hw * s.cin * s.width * k * k
    if s.kernel.startswith("depthwise"):
        return hw * s.cin * k * k
    if s.kernel == "fc":
        return s.cin * s.cout
    if s.kernel == "block:mbconv":
        return s.size * s.size * s.cin * s.cin * 6 * 2
    return s.size * s.size * s.cin


def build_onnx(spec: KernelSpec, path: Path, int8: bool = False) -> Path:
    """Write ``spec`` as an ONNX file at ``path`` (QDQ int8 if ``int8``); returns ``path``."""
    onnx = require("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(zlib.crc32(spec.id.encode()))
    c, n = spec.cin, spec.size
    inits: list = []
    nodes: list = []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name))
        return name

    def conv(x: str, cin: int, cout: int, k: int, s: int, groups: int, act: str, tag: str) -> str:
        w, b = weight(f"{tag}_w", (cout, cin // groups, k, k)), weight(f"{tag}_b", (cout,))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{tag}_y"], kernel_shape=[k, k], strides=[s, s],
                                      pads=[k // 2] * 4, group=groups, name=tag))
        if act == "relu":
            nodes.append(helper.make_node("Relu", [f"{tag}_y"], [f"{tag}_r"], name=f"{tag}_relu"))
            return f"{tag}_r"
        return f"{tag}_y"

    in_shape = [1, c] if spec.kernel == "fc" else [1, c, n, n]
    context = CONTEXT.get(spec.kernel)
    y = conv("x", c, c, 3, 1, c, "none", "before") if context is not None else "x"
    for i in range(spec.depth):  # shape-preserving kernels run as a chain: distinct weights, tensors flowing on
        y = _layer(spec, y, i, conv, weight, nodes, inits, helper, numpy_helper)
    if context:
        cout = int(c * context)
        y = conv(y, cout, cout, 3, 1, cout, "none", "after")
    x_shape = ["batch", *in_shape[1:]] if spec.kernel == "shape" else in_shape  # shape ops run on a symbolic dim
    graph = helper.make_graph(nodes, spec.id, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if not int8:
        onnx.save(model, str(path))
        return path
    fp32 = path.with_suffix(".fp32.onnx")
    onnx.save(model, str(fp32))
    _quantize(fp32, path, in_shape)
    fp32.unlink()
    return path


def _layer(spec: KernelSpec, x: str, i: int, conv, weight, nodes: list, inits: list, helper, numpy_helper) -> str:
    """One copy of the spec's kernel reading ``x``; returns its output name (suffix ``i`` keeps names unique)."""
    kern, c = spec.kernel, spec.cin
    t = f"_{i}"
    if kern.startswith(("conv", "gconv", "pointwise")):
        k, s = _kernel_size(kern), 2 if kern.endswith("s2") else 1
        cin, cout = (c, spec.cout) if i % 2 == 0 else (spec.cout, c)  # a pointwise chain alternates widths
        groups = c // spec.width if kern.startswith("gconv") else 1
        return conv(x, cin, cout, k, s, groups, spec.act, "conv" + t)
    if kern.startswith("depthwise"):
        k, s = (3 if "3x3" in kern else 5), (2 if kern.endswith("s2") else 1)
        return conv(x, c, c, k, s, c, "none", "dw" + t)
    y = "y" + t
    if kern == "fc":
        w, b = weight("fc_w" + t, (spec.cout, c)), weight("fc_b" + t, (spec.cout,))
        nodes.append(helper.make_node("Gemm", [x, w, b], [y], transB=1, name="fc" + t))
    elif kern == "act:silu":
        nodes += [helper.make_node("Sigmoid", [x], ["sig" + t], name="silu_gate" + t),
                  helper.make_node("Mul", [x, "sig" + t], [y], name="silu_mul" + t)]
    elif kern.startswith("act:"):
        op = {"relu": "Relu", "hardswish": "HardSwish", "sigmoid": "Sigmoid", "hardsigmoid": "HardSigmoid",
              "gelu": "Erf", "tanh": "Tanh"}[kern[4:]]
        nodes.append(helper.make_node(op, [x], [y], name=op.lower() + t))
    elif kern in ("add", "mul"):
        nodes.append(helper.make_node(kern.capitalize(), [x, "x"], [y], name=kern + t))
    elif kern == "mul_broadcast":
        nodes.append(helper.make_node("Mul", [x, weight("gate" + t, (1, c, 1, 1))], [y], name="gate_mul" + t))
    elif kern == "pool:global":
        nodes.append(helper.make_node("GlobalAveragePool", [x], [y], name="gap" + t))
    elif kern == "pool:reduce":
        nodes.append(helper.make_node("ReduceMean", [x], [y], axes=[2, 3], keepdims=1, name="reduce_mean" + t))
    elif kern == "pool:window":
        nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4,
                                      name="maxpool" + t))
    elif kern.startswith("copy:"):
        y = _copy(kern[5:], x, c, nodes, inits, helper, numpy_helper)
    elif kern == "shape":  # zero pads computed from the input's shape at run time, as TF-"same" ports do
        idx = numpy_helper.from_array(np.array([2], np.int64), "axis_h" + t)
        inits.append(idx)
        nodes += [helper.make_node("Shape", [x], ["s" + t], name="shape" + t),
                  helper.make_node("Gather", ["s" + t, idx.name], ["h" + t], axis=0, name="gather" + t),
                  helper.make_node("Sub", ["h" + t, "h" + t], ["z" + t], name="sub" + t),
                  helper.make_node("Concat", ["z" + t] * 8, ["pads" + t], axis=0, name="pads" + t),
                  helper.make_node("Pad", [x, "pads" + t], [y], name="pad" + t)]
    elif kern == "block:se":
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["p" + t], name="se_pool" + t))
        r = conv("p" + t, c, max(8, c // 4), 1, 1, 1, "relu", "se_reduce" + t)
        e = conv(r, max(8, c // 4), c, 1, 1, 1, "none", "se_expand" + t)
        nodes.append(helper.make_node("HardSigmoid", [e], ["g" + t], alpha=1 / 6, name="se_gate" + t))
        nodes.append(helper.make_node("Mul", [x, "g" + t], [y], name="se_mul" + t))
    elif kern == "block:mbconv":
        e = conv(x, c, 6 * c, 1, 1, 1, "relu", "expand" + t)
        d = conv(e, 6 * c, 6 * c, 3, 1, 6 * c, "relu", "dw" + t)
        p = conv(d, 6 * c, c, 1, 1, 1, "none", "project" + t)
        nodes.append(helper.make_node("Add", [x, p], [y], name="residual" + t))
    else:
        raise ValueError(f"unknown suite kernel {kern!r}")
    return y


def _copy(kind: str, x: str, c: int, nodes: list, inits: list, helper, numpy_helper) -> str:
    def const(name: str, values) -> str:
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    if kind == "concat":  # of two tensors with their own ranges, as in a network: int8 requantizes one of them
        nodes.append(helper.make_node("Relu", ["x"], ["x_relu"], name="relu"))
        nodes.append(helper.make_node("Concat", [x, "x_relu"], ["y0"], axis=1, name="concat"))
    elif kind == "pad":
        # with an empty value input, as torch exports F.pad: onnxruntime does not fold it into the conv after it
        # (graph_cost knows), so the pad is timed as the copy it is in such networks
        nodes.append(helper.make_node("Pad", [x, const("pads", [0, 0, 1, 1, 0, 0, 1, 1]), ""], ["y0"], name="pad"))
    elif kind == "transpose":
        nodes.append(helper.make_node("Transpose", [x], ["y0"], perm=[0, 2, 3, 1], name="transpose"))
    elif kind == "split":
        nodes.append(helper.make_node("Split", [x, const("parts", [c // 2, c - c // 2])], ["y0", "y1"], axis=1,
                                      name="split"))
    elif kind == "slice":
        nodes.append(helper.make_node("Slice", [x, const("st", [0]), const("en", [c // 2]), const("ax", [1])],
                                      ["y0"], name="slice"))
    elif kind == "resize":
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        nodes.append(helper.make_node("Resize", [x, "", "scales"], ["y0"], mode="nearest", name="resize"))
    else:
        raise ValueError(f"unknown copy kernel {kind!r}")
    return "y0"


def _quantize(src: Path, dst: Path, in_shape: list[int]) -> None:
    """QDQ int8 with onnxruntime's static quantizer (uint8 activations, int8 per-tensor weights)."""
    ortq = require("onnxruntime.quantization", "onnxruntime")

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.standard_normal(in_shape).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.data, None)

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint per call on the root logger
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # and its sessions warn about initializers they drop
    try:
        ortq.quantize_static(str(src), str(dst), Reader(), quant_format=ortq.QuantFormat.QDQ,
                             activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8)
    finally:
        root.setLevel(level)
