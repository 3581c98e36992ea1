"""The networks behind published phone latencies, as per-layer cost lists (no weights, no downloads).

The latency predictor is calibrated on published measurements (TFLite benchmark pages, the MobileNet and
EfficientNet-lite READMEs); to fit it we need the cost of each layer of the very networks measured. Each
builder below writes that list the way a TFLite graph holds it (conv + BN + ReLU/ReLU6 fused into one op,
HARD_SWISH, the squeeze-excite's MEAN / two 1x1 convs / gate / MUL as separate ops), in NHWC, batch 1. Their
MACs are checked against the published figures in tests/profile/test_predict.py (``PUBLISHED_MACS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .graph_cost import GraphCost, LayerCost, _conv_kernel, classify_conv

PUBLISHED_MACS = {
    # name: (MACs, source) - the figure each builder is checked against
    "mobilenet_v1_1.0_224": (569e6, "MobileNetV1 paper, Table 8"),
    "mobilenet_v1_0.5_224": (150e6, "MobileNetV1 paper, Table 6 / slim README"),
    "mobilenet_v1_0.25_128": (14e6, "tensorflow/models slim MobileNet_v1 README"),
    "mobilenet_v2_1.0_224": (300e6, "tensorflow/models slim MobileNet README"),
    "mobilenet_v2_0.35_96": (11e6, "tensorflow/models slim MobileNet README"),
    "mobilenet_v3_large_1.0_224": (217e6, "tensorflow/models slim MobileNetV3 table"),
    "mobilenet_v3_small_1.0_224": (66e6, "tensorflow/models slim MobileNetV3 table"),
    "efficientnet_lite0": (407e6, "tensorflow/tpu efficientnet-lite README"),
    "efficientnet_lite4": (2.64e9, "tensorflow/tpu efficientnet-lite README"),
}


class _Net:
    """Tracks the activation shape while layers are appended; ``elem`` is bytes per element (4 fp32, 1 int8)."""

    def __init__(self, res: int, elem: int) -> None:
        self.h = self.w = res
        self.c = 3
        self.elem = elem
        self.layers: list[LayerCost] = []
        self.input_shape = (1, res, res, 3)

    def _add(self, op: str, kind: str, macs: int, elements: int, w: int, a_in: int, kernel: str) -> None:
        out = self.h * self.w * self.c
        name = f"{op.lower()}_{len(self.layers)}"
        self.layers.append(LayerCost(name, op, kind, macs, elements, w * self.elem, (a_in + out) * self.elem,
                                     (1, self.h, self.w, self.c), kernel))

    def conv(self, cout: int, k: int = 1, s: int = 1, act: str = "relu") -> _Net:
        a_in, cin = self.h * self.w * self.c, self.c
        self.h, self.w, self.c = math.ceil(self.h / s), math.ceil(self.w / s), cout
        macs = self.h * self.w * cout * k * k * cin
        kind = classify_conv(1, cin, cout, (k, k))
        self._add("CONV_2D", kind, macs, 0, k * k * cin * cout, a_in, _conv_kernel(kind, (k, k), s))
        return self._act(act)

    def dw(self, k: int = 3, s: int = 1, act: str = "relu") -> _Net:
        a_in = self.h * self.w * self.c
        self.h, self.w = math.ceil(self.h / s), math.ceil(self.w / s)
        self._add("DEPTHWISE_CONV_2D", "depthwise", self.h * self.w * self.c * k * k, 0, k * k * self.c, a_in,
                  _conv_kernel("depthwise", (k, k), s))
        return self._act(act)

    def _act(self, act: str) -> _Net:
        if act == "hswish":  # relu/relu6 fuse into the conv; hard-swish is an op of its own
            self.elementwise("HARD_SWISH")
        return self

    def elementwise(self, op: str, inputs: int = 1) -> _Net:
        n = self.h * self.w * self.c
        kernel = {"ADD": "add", "MUL": "mul", "HARD_SWISH": "act:hardswish", "HARD_SIGMOID": "act:hardsigmoid"}[op]
        self._add(op, "elementwise" if inputs > 1 or op == "MUL" else "activation", 0, n, 0, n * inputs, kernel)
        return self

    def se(self, squeeze: int) -> _Net:
        """Squeeze-excite: global mean, 1x1 reduce (ReLU), 1x1 expand, hard-sigmoid, channel-wise MUL."""
        h, w, c = self.h, self.w, self.c
        self.pool()
        self.conv(squeeze).conv(c, act="none").elementwise("HARD_SIGMOID")
        self.h, self.w, self.c = h, w, c
        return self.elementwise("MUL")

    def pool(self) -> _Net:
        a_in = self.h * self.w * self.c
        self.h = self.w = 1
        self._add("MEAN", "pool", 0, a_in, 0, a_in, "pool:global")
        return self

    def fc(self, cout: int) -> _Net:
        cin = self.c
        self.c = cout
        self._add("FULLY_CONNECTED", "fc", cin * cout, 0, cin * cout, cin, "fc")
        return self

    def inverted_residual(self, cout: int, expand: int, k: int, s: int, act: str = "relu",
                          se: int = 0) -> _Net:
        cin = self.c
        if expand != cin:
            self.conv(expand, act=act)
        self.dw(k, s, act)
        if se:
            self.se(se)
        self.conv(cout, act="none")
        if s == 1 and cin == cout:
            self.elementwise("ADD", inputs=2)
        return self


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding of the MobileNet papers (never more than 10% below ``v``)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def mobilenet_v1(alpha: float, res: int, elem: int) -> _Net:
    net = _Net(res, elem).conv(make_divisible(32 * alpha), 3, 2)
    for cout, s in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)):
        net.dw(3, s).conv(make_divisible(cout * alpha))
    return net.pool().fc(1001)


def mobilenet_v2(alpha: float, res: int, elem: int) -> _Net:
    net = _Net(res, elem).conv(make_divisible(32 * alpha), 3, 2)
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            net.inverted_residual(make_divisible(c * alpha), net.c * t, 3, s if i == 0 else 1)
    return net.conv(make_divisible(1280 * alpha)).pool().fc(1001)  # slim scales the head too


_V3_LARGE = (  # kernel, expansion, out, squeeze-excite, activation, stride (MobileNetV3 paper, Table 1)
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1), (3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1), (5, 960, 160, True, "hswish", 1),
)
_V3_SMALL = (  # (MobileNetV3 paper, Table 2)
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2), (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1), (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1), (5, 576, 96, True, "hswish", 1),
)


def mobilenet_v3(large: bool, res: int, elem: int) -> _Net:
    net = _Net(res, elem).conv(16, 3, 2, act="hswish")
    for k, exp, out, se, act, s in _V3_LARGE if large else _V3_SMALL:
        net.inverted_residual(out, exp, k, s, act, make_divisible(exp / 4) if se else 0)
    net.conv(960 if large else 576, act="hswish").pool()
    return net.conv(1280 if large else 1024, act="hswish").fc(1001)


_EFFNET = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
           (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))  # kernel, stride, expansion, out, repeats (EfficientNet-B0)


def efficientnet_lite(width: float, depth: float, res: int, elem: int) -> _Net:
    """EfficientNet-lite: ReLU6, no squeeze-excite, stem/head and first/last stage repeats not scaled."""
    net = _Net(res, elem).conv(32, 3, 2)
    for i, (k, s, e, c, n) in enumerate(_EFFNET):
        repeats = n if i in (0, len(_EFFNET) - 1) else int(math.ceil(depth * n))
        for j in range(repeats):
            net.inverted_residual(make_divisible(c * width), net.c * e, k, s if j == 0 else 1)
    return net.conv(1280).pool().fc(1000)


BUILDERS: dict[str, Callable[[int], _Net]] = {
    "mobilenet_v1_1.0_224": lambda e: mobilenet_v1(1.0, 224, e),
    "mobilenet_v1_0.5_224": lambda e: mobilenet_v1(0.5, 224, e),
    "mobilenet_v1_0.25_128": lambda e: mobilenet_v1(0.25, 128, e),
    "mobilenet_v2_1.0_224": lambda e: mobilenet_v2(1.0, 224, e),
    "mobilenet_v2_0.35_96": lambda e: mobilenet_v2(0.35, 96, e),
    "mobilenet_v3_large_1.0_224": lambda e: mobilenet_v3(True, 224, e),
    "mobilenet_v3_small_1.0_224": lambda e: mobilenet_v3(False, 224, e),
    "efficientnet_lite0": lambda e: efficientnet_lite(1.0, 1.0, 224, e),
    "efficientnet_lite4": lambda e: efficientnet_lite(1.4, 1.8, 300, e),
}


def reference_names() -> list[str]:
    return list(BUILDERS)


def reference_cost(name: str, precision: str = "fp32") -> GraphCost:
    """The per-layer cost of a published reference network, as ``graph_cost`` would read its TFLite file."""
    if name not in BUILDERS:
        raise KeyError(f"unknown reference model {name!r}; known: {', '.join(BUILDERS)}")
    net = BUILDERS[name](1 if precision == "int8" else 4)
    return GraphCost(f"reference:{name}", "reference", precision, net.input_shape, net.layers)
