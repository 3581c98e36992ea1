"""The MIL evaluator against PyTorch, one op at a time, for every op in ``SUPPORTED_OPS``.

Each case builds a one-op MIL program with coremltools' builder and states what PyTorch computes for it
(``nn`` modules and torch functions, written out here, not the evaluator's code). A guard fails when an op
is added to the evaluator without a case here. One more test saves all cases of each opset as a real
.mlpackage and evaluates it as loaded back from disk (the path Core ML artifacts take), so serialization
details (inline values, packed indices, sub-byte dtypes) are covered too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'edgerep[coreml]')")

from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import Function, Program, types  # noqa: E402

from edgerep.backends.mil_eval import SUPPORTED_OPS, MilEvaluator, load_program, op_types  # noqa: E402

F = nn.functional
_rng = np.random.default_rng(0)


def _normal(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


INPUTS: dict[str, np.ndarray] = {
    "x": _normal(1, 4, 5, 5),
    "y": _normal(1, 4, 1, 1),  # broadcasts against x
    "p": _rng.uniform(0.5, 2.0, (1, 4, 5, 5)).astype(np.float32),  # positive: log, sqrt, pow, division
    "big": 4 * _normal(1, 4, 5, 5),  # reaches the clamps of hard sigmoid / clip
    "v": _normal(2, 3, 6),  # rank 3: linear, matmul, layer norm, 1-d conv
}
W = _normal(6, 2, 3, 3)  # grouped conv weight (groups=2 over x's 4 channels)
B = _normal(6)


@dataclass(frozen=True)
class Case:
    """One MIL op: ``build`` makes it from the input vars, ``ref`` says what PyTorch computes from the tensors."""

    op: str
    build: Callable
    ref: Callable
    inputs: tuple[str, ...] = ("x",)
    opset: str = "iOS16"
    variant: str = ""
    tol: float = 1e-5

    @property
    def id(self) -> str:
        return f"{self.op}[{self.variant}]" if self.variant else self.op


def _module(m: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: m.eval()(x)


def _seeded(m: nn.Module) -> nn.Module:
    """Random (not default) parameters and running statistics, so every parameter matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in [*m.parameters(), *m.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return m.eval()


def _unary(op: str, ref: Callable, inp: str = "x", **kw) -> Case:
    return Case(op, lambda x: getattr(mb, op)(x=x, **kw), ref, (inp,))


def _binary(op: str, ref: Callable, a: str = "x", b: str = "y") -> Case:
    return Case(op, lambda x, y: getattr(mb, op)(x=x, y=y), ref, (a, b))


def _weight(build_weight: Callable[[], object], ref_weight: np.ndarray, op: str, opset: str, variant: str = "") -> Case:
    """A compressed-weight op feeding a grouped conv: what matters is the dense weight the conv sees."""
    return Case(
        op,
        lambda x: mb.conv(x=x, weight=build_weight(), groups=2),
        lambda x: F.conv2d(x, torch.from_numpy(np.ascontiguousarray(ref_weight, dtype=np.float32)), groups=2),
        opset=opset,
        variant=variant,
    )


def _pack_lsb_first(indices: np.ndarray, nbits: int) -> np.ndarray:
    """Pack indices as the iOS16 palette spec says (LSB first, crossing bytes), via one big integer."""
    big = sum(int(v) << (i * nbits) for i, v in enumerate(indices.reshape(-1)))
    return np.frombuffer(big.to_bytes(math.ceil(indices.size * nbits / 8), "little"), np.uint8).copy()


def _palette_case(nbits: int) -> Case:
    lut = np.sort(_normal(2**nbits))
    idx = _rng.integers(0, 2**nbits, W.shape)
    packed = _pack_lsb_first(idx, nbits)
    shape = np.array(W.shape, np.uint32)
    return _weight(lambda: mb.constexpr_lut_to_dense(indices=packed, lut=lut, shape=shape), lut[idx],
                   "constexpr_lut_to_dense", "iOS16", f"iOS16-{nbits}bit")


def _grouped_palette_case() -> Case:
    lut = np.sort(_normal(2, 1, 1, 1, 16, 1), axis=-2)  # one 4-bit palette per 3 output channels
    idx = _rng.integers(0, 16, W.shape).astype(np.uint8)
    dense = np.take_along_axis(np.repeat(lut[..., 0], 3, axis=0), idx[..., None].astype(np.int64), -1)[..., 0]
    return _weight(lambda: mb.constexpr_lut_to_dense(indices=mb.const(val=idx.astype(types.np_uint4_dtype)), lut=lut),
                   dense, "constexpr_lut_to_dense", "iOS18", "iOS18-grouped")


def _affine_weight_case() -> Case:
    q = _rng.integers(-128, 128, W.shape).astype(np.int8)
    scale = _rng.uniform(0.01, 0.02, 6).astype(np.float32)
    zero = _rng.integers(-3, 4, 6).astype(np.int8)
    dense = (q.astype(np.float32) - zero.reshape(6, 1, 1, 1)) * scale.reshape(6, 1, 1, 1)
    return _weight(
        lambda: mb.constexpr_affine_dequantize(quantized_data=q, scale=scale, zero_point=zero, axis=0),
        dense, "constexpr_affine_dequantize", "iOS16",
    )


def _blockwise_case() -> Case:
    q = _rng.integers(-8, 8, W.shape).astype(np.int8)
    scale = _rng.uniform(0.05, 0.1, (3, 2, 1, 1)).astype(np.float32)  # blocks of 2 output x 1 input channels
    offset = _rng.integers(-2, 3, (3, 2, 1, 1)).astype(np.int8)
    dense = (q - offset.repeat(2, 0)) * scale.repeat(2, 0)  # size-1 axes broadcast
    return _weight(lambda: mb.constexpr_blockwise_shift_scale(data=q, scale=scale, offset=offset), dense,
                   "constexpr_blockwise_shift_scale", "iOS18")


def _quant_ref(x: Tensor, per_channel: bool) -> Tensor:
    """The integer codes of PyTorch's fake quantization of x: int8 per channel (axis 1) or uint8 per tensor."""
    if per_channel:
        scale, zero = torch.from_numpy(QSCALE), torch.from_numpy(QZERO).int()
        fq = torch.fake_quantize_per_channel_affine(x, scale, zero, 1, -128, 127)
        return torch.round(fq / scale.reshape(1, -1, 1, 1)) + zero.reshape(1, -1, 1, 1)
    return torch.round(torch.fake_quantize_per_tensor_affine(x, 0.03, 7, 0, 255) / 0.03) + 7


QSCALE = np.array([0.01, 0.02, 0.03, 0.05], np.float32)
QZERO = np.array([-3, 0, 2, 5], np.int8)
LW, LB = _normal(5, 6), _normal(5)
MW = _normal(6, 4)
PRELU = _normal(4)
BN = _seeded(nn.BatchNorm2d(4, eps=1e-3))
LN = _seeded(nn.LayerNorm(6, eps=1e-4))
CONV = nn.Conv2d(4, 6, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
with torch.no_grad():
    CONV.weight.copy_(torch.from_numpy(W))
    CONV.bias.copy_(torch.from_numpy(B))
W1D = _normal(4, 3, 3)


CASES: list[Case] = [
    # elementwise
    _unary("relu", _module(nn.ReLU())),
    _unary("relu6", _module(nn.ReLU6()), "big"),
    _unary("sigmoid", torch.sigmoid),
    _unary("tanh", torch.tanh),
    _unary("silu", _module(nn.SiLU())),
    _unary("exp", torch.exp),
    _unary("log", torch.log, "p"),
    _unary("sqrt", torch.sqrt, "p"),
    _unary("abs", torch.abs),
    _unary("erf", torch.special.erf),
    _unary("floor", torch.floor, "big"),
    _unary("ceil", torch.ceil, "big"),
    _unary("square", lambda x: x * x),
    _unary("sign", torch.sign),
    _unary("softsign", _module(nn.Softsign())),
    _unary("softplus", _module(nn.Softplus())),
    _unary("rsqrt", lambda p: 1 / torch.sqrt(p + 1e-3), "p", epsilon=1e-3),
    _unary("inverse", lambda p: 1 / (p + 1e-3), "p", epsilon=1e-3),
    _unary("sigmoid_hard", _module(nn.Hardsigmoid()), "big", alpha=1 / 6, beta=0.5),
    _unary("clip", _module(nn.Hardtanh(-0.5, 0.5)), "x", alpha=-0.5, beta=0.5),
    _unary("leaky_relu", _module(nn.LeakyReLU(0.2)), "x", alpha=0.2),
    _unary("elu", _module(nn.ELU(0.7)), "x", alpha=0.7),
    Case("prelu", lambda x: mb.prelu(x=x, alpha=PRELU), lambda x: F.prelu(x, torch.from_numpy(PRELU))),
    Case("gelu", lambda x: mb.gelu(x=x, mode="EXACT"), _module(nn.GELU()), variant="exact"),
    Case("gelu", lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"), _module(nn.GELU("tanh")), variant="tanh"),
    Case("gelu", lambda x: mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"), lambda x: x * torch.sigmoid(1.702 * x),
         variant="sigmoid"),
    _binary("add", torch.add),
    _binary("sub", torch.sub),
    _binary("mul", torch.mul),
    _binary("real_div", torch.div, "x", "p"),
    _binary("maximum", torch.maximum),
    _binary("minimum", torch.minimum),
    _binary("pow", torch.pow, "p", "y"),
    _binary("floor_div", lambda a, b: torch.floor(a / b), "big", "p"),
    *(Case(op, lambda x, y, op=op: mb.cast(x=getattr(mb, op)(x=x, y=y), dtype="fp32"),
           lambda x, y, fn=fn: fn(x, y).float(), ("x", "y"))
      for op, fn in (("greater", torch.gt), ("greater_equal", torch.ge), ("less", torch.lt),
                     ("less_equal", torch.le), ("equal", torch.eq), ("not_equal", torch.ne))),
    Case("gather", lambda x: mb.gather(x=x, indices=np.array([3, 0, 0, 2], np.int32), axis=1),
         lambda x: x[:, [3, 0, 0, 2]]),
    Case("gather", lambda x: mb.gather(x=x, indices=np.array([[4, -1], [0, 2]], np.int32), axis=-1),
         lambda x: x[..., torch.tensor([[4, 4], [0, 2]])], variant="2d-indices-negative"),
    Case("softmax", lambda x: mb.softmax(x=x, axis=1), _module(nn.Softmax(1))),
    Case("softmax", lambda x: mb.softmax(x=x, axis=-1), _module(nn.Softmax(-1)), variant="last-axis"),
    # conv, linear, pooling, normalization
    Case("conv", lambda x: mb.conv(x=x, weight=W, bias=B, strides=[2, 1], pad_type="custom", pad=[1, 1, 2, 2],
                                   dilations=[1, 2], groups=2), _module(CONV), variant="2d-grouped"),
    Case("conv", lambda v: mb.conv(x=v, weight=W1D, pad_type="same"),
         lambda v: F.conv1d(v, torch.from_numpy(W1D), padding="same"), ("v",), variant="1d-same"),
    Case("linear", lambda v: mb.linear(x=v, weight=LW, bias=LB),
         lambda v: F.linear(v, torch.from_numpy(LW), torch.from_numpy(LB)), ("v",)),
    Case("matmul", lambda v: mb.matmul(x=v, y=MW), lambda v: v @ torch.from_numpy(MW), ("v",)),
    Case("matmul", lambda v: mb.matmul(x=v, y=v, transpose_y=True), lambda v: v @ v.transpose(1, 2), ("v",),
         variant="transpose_y"),
    Case("matmul", lambda v: mb.matmul(x=v, y=v, transpose_x=True), lambda v: v.transpose(1, 2) @ v, ("v",),
         variant="transpose_x"),
    Case("avg_pool", lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                           pad=[1, 1, 1, 1], exclude_padding_from_average=True),
         _module(nn.AvgPool2d(3, 2, 1, count_include_pad=False)), variant="exclude-padding"),
    Case("avg_pool", lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[1, 1], pad_type="same"),
         _module(nn.AvgPool2d(3, 1, 1, count_include_pad=True)), variant="same"),
    Case("max_pool", lambda x: mb.max_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                           pad=[1, 1, 1, 1]), _module(nn.MaxPool2d(3, 2, 1))),
    Case("max_pool", lambda x: mb.max_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid",
                                           ceil_mode=True), _module(nn.MaxPool2d(2, 2, ceil_mode=True)),
         variant="ceil"),
    Case("batch_norm", lambda x: mb.batch_norm(x=x, mean=BN.running_mean.numpy(), variance=BN.running_var.numpy(),
                                               gamma=BN.weight.detach().numpy(), beta=BN.bias.detach().numpy(),
                                               epsilon=1e-3), _module(BN)),
    Case("layer_norm", lambda v: mb.layer_norm(x=v, axes=[-1], gamma=LN.weight.detach().numpy(),
                                               beta=LN.bias.detach().numpy(), epsilon=1e-4), _module(LN), ("v",)),
    Case("layer_norm", lambda x: mb.layer_norm(x=x, axes=[1, 2, 3], epsilon=1e-5),
         _module(nn.LayerNorm((4, 5, 5), elementwise_affine=False)), variant="no-affine"),
    # reductions
    Case("reduce_mean", lambda x: mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True), lambda x: x.mean((2, 3), True)),
    Case("reduce_sum", lambda x: mb.reduce_sum(x=x, axes=[1], keep_dims=False), lambda x: x.sum(1)),
    Case("reduce_max", lambda x: mb.reduce_max(x=x, axes=[-1], keep_dims=True), lambda x: x.amax(-1, True)),
    Case("reduce_min", lambda x: mb.reduce_min(x=x), lambda x: x.amin()),
    # shape and layout
    Case("concat", lambda x, y: mb.concat(values=[x, mb.tile(x=y, reps=[1, 1, 5, 5]), x], axis=1),
         lambda x, y: torch.cat([x, y.expand(1, 4, 5, 5), x], 1), ("x", "y")),
    Case("reshape", lambda x: mb.reshape(x=x, shape=[1, 4, 25]), lambda x: x.reshape(1, 4, 25)),
    Case("reshape", lambda x: mb.reshape(x=x, shape=[0, 0, -1, 1]), lambda x: x.reshape(1, 4, 25, 1),
         variant="zero-and-minus-one"),
    Case("transpose", lambda x: mb.transpose(x=x, perm=[0, 2, 3, 1]), lambda x: x.permute(0, 2, 3, 1)),
    Case("squeeze", lambda y: mb.squeeze(x=y, axes=[2, 3]), lambda y: y.squeeze((2, 3)), ("y",)),
    Case("squeeze", lambda y: mb.squeeze(x=y), lambda y: y.squeeze(), ("y",), variant="all"),
    Case("expand_dims", lambda v: mb.expand_dims(x=v, axes=[0, -1]), lambda v: v[None, ..., None], ("v",)),
    Case("tile", lambda x: mb.tile(x=x, reps=[2, 1, 3, 1]), lambda x: x.repeat(2, 1, 3, 1)),
    Case("pad", lambda x: mb.pad(x=x, pad=[0, 1, 2, 0], mode="constant", constant_val=0.5),
         lambda x: F.pad(x, (2, 0, 0, 1), value=0.5), variant="constant"),
    Case("pad", lambda x: mb.pad(x=x, pad=[1, 2, 2, 1], mode="reflect"), _module(nn.ReflectionPad2d((2, 1, 1, 2))),
         variant="reflect"),
    Case("pad", lambda x: mb.pad(x=x, pad=[1, 0, 0, 2], mode="replicate"), _module(nn.ReplicationPad2d((0, 2, 1, 0))),
         variant="replicate"),
    Case("slice_by_index", lambda x: mb.slice_by_index(x=x, begin=[0, 1, 0, 1], end=[1, 4, 5, 5], stride=[1, 2, 1, 2]),
         lambda x: x[:, 1:4:2, :, 1:5:2]),
    Case("slice_by_index", lambda x: mb.slice_by_index(x=x, begin=[0, 2, 3, 0], end=[1, 0, 0, 4],
                                                       begin_mask=[False, False, False, True],
                                                       end_mask=[False, True, False, False],
                                                       squeeze_mask=[True, False, True, False]),
         lambda x: x[0, 2:, 3, :4], variant="masks"),
    Case("split", lambda x: mb.split(x=x, num_splits=2, axis=1), lambda x: x.chunk(2, 1), variant="num_splits"),
    Case("split", lambda x: mb.split(x=x, split_sizes=[1, 3], axis=1), lambda x: x.split([1, 3], 1),
         variant="split_sizes"),
    Case("identity", lambda x: mb.identity(x=x), lambda x: x),
    Case("const", lambda x: mb.add(x=x, y=mb.const(val=B[:5])), lambda x: x + torch.from_numpy(B[:5])),
    Case("cast", lambda x: mb.cast(x=mb.cast(x=x, dtype="fp16"), dtype="fp32"), lambda x: x.half().float()),
    # quantization and compressed weights
    Case("quantize", lambda x: mb.cast(x=mb.quantize(input=x, scale=QSCALE, zero_point=QZERO, axis=1,
                                                     output_dtype="int8"), dtype="fp32"),
         lambda x: _quant_ref(x, True), opset="iOS17", variant="per-channel-int8"),
    Case("quantize", lambda big: mb.cast(x=mb.quantize(input=big, scale=np.float32(0.03), zero_point=np.uint8(7),
                                                       output_dtype="uint8"), dtype="fp32"),
         lambda big: _quant_ref(big, False), ("big",), opset="iOS17",
         variant="per-tensor-uint8-saturating"),
    Case("dequantize", lambda x: mb.dequantize(input=mb.quantize(input=x, scale=QSCALE, zero_point=QZERO, axis=1,
                                                                 output_dtype="int8"),
                                               scale=QSCALE, zero_point=QZERO, axis=1),
         lambda x: torch.fake_quantize_per_channel_affine(x, torch.from_numpy(QSCALE),
                                                          torch.from_numpy(QZERO).int(), 1, -128, 127),
         opset="iOS17"),
    _affine_weight_case(),
    _blockwise_case(),
    _palette_case(1),
    _palette_case(2),
    _palette_case(4),
    _palette_case(6),
    _palette_case(8),
    _grouped_palette_case(),
    _weight(lambda: mb.constexpr_cast(source_val=W.astype(np.float16), output_dtype="fp32"),
            W.astype(np.float16).astype(np.float32), "constexpr_cast", "iOS16"),
]


def _function(cases: list[Case], opset: str) -> Function:
    """One MIL function holding ``cases`` side by side (inputs prefixed per case), outputs in case order."""
    inputs = {f"c{i}_{n}": mb.TensorSpec(shape=INPUTS[n].shape) for i, c in enumerate(cases) for n in c.inputs}
    with Function(inputs, opset_version=getattr(ct.target, opset)) as fn:
        outputs = []
        for i, c in enumerate(cases):
            out = c.build(*(fn.inputs[f"c{i}_{n}"] for n in c.inputs))
            outputs += list(out) if isinstance(out, (tuple, list)) else [out]
        fn.set_outputs(outputs)
    return fn


def _feeds(cases: list[Case]) -> dict[str, np.ndarray]:
    return {f"c{i}_{n}": INPUTS[n] for i, c in enumerate(cases) for n in c.inputs}


@torch.no_grad()
def _references(case: Case) -> list[np.ndarray]:
    out = case.ref(*(torch.from_numpy(INPUTS[n]) for n in case.inputs))
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]


def _check(case: Case, outs: list[np.ndarray]) -> None:
    refs = _references(case)
    assert len(outs) == len(refs), case.id
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape, f"{case.id}: shape {out.shape} != {ref.shape}"
        np.testing.assert_allclose(out, ref, rtol=case.tol, atol=case.tol, err_msg=case.id)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_op_matches_pytorch(case: Case) -> None:
    fn = _function([case], case.opset)
    assert case.op in op_types(fn), f"{case.id}: the built program has no {case.op} op"
    evaluator = MilEvaluator(fn)
    result = evaluator(_feeds([case]))
    _check(case, [result[n] for n in evaluator.output_names])


def test_every_supported_op_has_a_case() -> None:
    missing = sorted(set(SUPPORTED_OPS) - {c.op for c in CASES})
    assert not missing, f"MIL ops the evaluator supports but no case tests against PyTorch: {missing}"
    assert {c.op for c in CASES} <= set(SUPPORTED_OPS)


@pytest.mark.parametrize("opset", sorted({c.opset for c in CASES}))
def test_ops_saved_and_loaded_back(tmp_path, opset: str) -> None:
    """All cases of one opset in one saved .mlpackage, evaluated as loaded from disk (as artifacts are)."""
    import logging
    import warnings

    cases = [c for c in CASES if c.opset == opset]
    prog = Program()
    prog.add_function("main", _function(cases, opset))
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(prog, convert_to="mlprogram", pass_pipeline=ct.PassPipeline.EMPTY,
                             minimum_deployment_target=getattr(ct.target, opset),
                             compute_precision=ct.precision.FLOAT32)
    mlmodel.save(str(tmp_path / "ops.mlpackage"))
    evaluator = MilEvaluator(load_program(tmp_path / "ops.mlpackage"))
    assert {c.op for c in cases} <= set(op_types(evaluator.function))
    result = evaluator(_feeds(cases))
    outs = iter(result[n] for n in evaluator.output_names)
    for case in cases:
        _check(case, [next(outs) for _ in _references(case)])


def test_observe_sees_every_computed_tensor_in_order() -> None:
    """``observe`` (activation calibration's hook) gets the input and each op's output, as the program computes it."""
    with Function({"x": mb.TensorSpec(shape=(1, 4, 5, 5))}, opset_version=ct.target.iOS16) as fn:
        fn.set_outputs([mb.add(x=mb.relu(x=fn.inputs["x"], name="r"), y=np.float32(1.0), name="a")])
    seen: list[tuple[str, Tensor]] = []
    MilEvaluator(fn)({"x": INPUTS["x"]}, observe=lambda name, value: seen.append((name, value)))
    assert [name for name, _ in seen] == ["x", "r", "a"]
    x = torch.from_numpy(INPUTS["x"])
    torch.testing.assert_close(seen[1][1], torch.relu(x))
    torch.testing.assert_close(seen[2][1], torch.relu(x) + 1)
