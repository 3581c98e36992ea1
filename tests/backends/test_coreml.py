"""Core ML backend and its MIL evaluator: artifacts are evaluated on Linux and compared with PyTorch.

Whole models: the shipped default model on shipped photos (fp32, fp16, w8), repvgg_a0 / mobileone_s0 with
random weights (fp32, fp16), a small conv net for the k-means palettes (fast k-means). Single ops: MIL
programs built with coremltools' builder, evaluated and compared with torch written out independently.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import CumMax, SingularValues
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'edgerep[coreml]')")

from coremltools.converters.mil import Builder as mb  # noqa: E402

from edgerep.backends.base import ExportRequest, UnsupportedLayerError  # noqa: E402
from edgerep.backends.coreml import BACKEND, _same_weight, _share_concat_ranges, activation_ranges  # noqa: E402
from edgerep.backends.mil_eval import SUPPORTED_OPS, MilEvaluator, UnsupportedOpError  # noqa: E402
from edgerep.checkpoints import (
    Checkpoint,  # noqa: E402
    load_model,  # noqa: E402
    )
from edgerep.defaults import default_images_dir, default_model_path  # noqa: E402
from edgerep.errors import BadInputError  # noqa: E402
from edgerep.images import list_images, load_images  # noqa: E402
from edgerep.proof.numerics import randomize_bn  # noqa: E402
from edgerep.reparam import reparameterize  # noqa: E402
from edgerep.zoo import create_model  # noqa: E402


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _agreement(out: np.ndarray, ref: np.ndarray) -> float:
    return float((out.argmax(1) == ref.argmax(1)).mean())


def _export_and_run(model: nn.Module, x: torch.Tensor, precision: str, path, **options):
    info = BACKEND.export(model, ExportRequest((1, *x.shape[1:]), precision, options=options), path)
    with torch.no_grad():
        ref = model(x).numpy()
    return info, BACKEND.run(path, x.numpy()), ref


def _tame(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Rescale each conv / linear so its output has unit std on ``x``: random re-param nets otherwise reach 1e8."""
    for layer in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
        seen = []
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.std()))
        with torch.no_grad():
            model(x)
            handle.remove()
            layer.weight /= seen[0]
            if layer.bias is not None:
                layer.bias /= seen[0]
    return model


@pytest.fixture(scope="module")
def shipped() -> tuple[nn.Module, torch.Tensor]:
    model, _ = load_model("repghostnet_050", default_model_path())
    pre = Checkpoint.open(default_model_path()).preprocess("repghostnet_050")
    files = list_images(default_images_dir()).files[::12]  # 17 photos over all classes
    return reparameterize(model).eval(), load_images(files, pre).images


@pytest.mark.parametrize(("precision", "rel", "agree"), [("fp32", 1e-4, 1.0), ("fp16", 2e-2, 0.9), ("w8", 3e-2, 0.9)])
def test_shipped_model(shipped, tmp_path, precision, rel, agree):
    model, images = shipped
    info, out, ref = _export_and_run(model, images, precision, tmp_path / "m.mlpackage")
    assert out.shape == ref.shape and out.dtype == np.float32
    assert _rel(out, ref) < rel
    assert _agreement(out, ref) >= agree
    assert (info.input_name, info.output_name, info.input_dtype) == ("input", "output", "float32")
    if precision == "w8":
        assert info.quantization["compressed_weights"] > 0
        assert any("constexpr_affine_dequantize" in n for n in info.notes)


@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0"])
@pytest.mark.parametrize(("precision", "rel"), [("fp32", 1e-4), ("fp16", 2e-2)])
def test_zoo_model_random_weights(tmp_path, name, precision, rel):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = reparameterize(randomize_bn(create_model(name, num_classes=10)).eval()).eval()
    _, out, ref = _export_and_run(_tame(model, x), x, precision, tmp_path / "m.mlpackage")
    assert _rel(out, ref) < rel


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # 18k weights: above coremltools' 2048 threshold
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 48),
    )
    return net.eval()


@pytest.mark.parametrize(("precision", "rel"), [("palettize8", 2e-2), ("palettize6", 4e-2), ("palettize4", 1.5e-1)])
def test_palettized(tmp_path, precision, rel):
    x = torch.randn(4, 3, 16, 16)
    info, out, ref = _export_and_run(_small_net(), x, precision, tmp_path / "m.mlpackage", source="export")
    assert _rel(out, ref) < rel
    assert info.quantization["compressed_weights"] >= 1
    if precision == "palettize4":  # grouped palettes exist only from iOS18: the target is raised, and said so
        assert info.quantization["minimum_deployment_target"] == "iOS18"
        assert any("raised" in n for n in info.notes)


@pytest.mark.parametrize(
    ("layer", "source", "words"),
    [(CumMax, "trace", "op cummax is not supported by coremltools"),
     (SingularValues, "export", "op linalg_svdvals is not supported by coremltools")],
    ids=["trace", "export"],
)
def test_unsupported_layer_is_named_with_its_op(tmp_path, layer, source, words):
    head = nn.Sequential(OrderedDict(act=nn.ReLU(), pool=layer()))
    model = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 1), head=head)).eval()
    with pytest.raises(UnsupportedLayerError) as exc:
        BACKEND.export(model, ExportRequest((1, 3, 4, 4), "fp32", options={"source": source}), tmp_path / "m.mlpackage")
    msg = str(exc.value)
    assert msg.startswith(f"coreml cannot convert layer head.pool ({layer.__name__}): {words}"), msg
    other = "export" if source == "trace" else "trace"
    assert f"--option source={other}" in msg and "\n" not in msg and exc.value.exit_code == 2
    assert not (tmp_path / "m.mlpackage").exists()


# --- single ops, built with the MIL builder --------------------------------------------------------------------------


def _eval(prog, **inputs: np.ndarray) -> np.ndarray:
    return next(iter(MilEvaluator(prog.functions["main"])(inputs).values()))


X = np.random.default_rng(0).standard_normal((1, 4, 7, 7)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((6, 2, 3, 3)).astype(np.float32)
B = np.random.default_rng(2).standard_normal(6).astype(np.float32)
SPEC = [mb.TensorSpec(shape=X.shape)]


@pytest.mark.parametrize(
    ("pad_type", "pad", "torch_pad"),
    [("valid", None, (0, 0, 0, 0)), ("custom", [1, 2, 0, 1], (0, 1, 1, 2)), ("same", None, (1, 1, 1, 1))],
)
def test_op_conv(pad_type, pad, torch_pad):
    kwargs = {"pad": pad} if pad else {}

    @mb.program(input_specs=SPEC)
    def prog(x):
        return mb.conv(x=x, weight=W, bias=B, strides=[2, 1], dilations=[1, 2], groups=2, pad_type=pad_type, **kwargs)

    same = pad_type == "same"  # stride 2 / dilation 2 on 7x7: 'same' pads (1,1) rows and (2,2) columns
    tp = (2, 2, 1, 1) if same else torch_pad
    xp = torch.nn.functional.pad(torch.from_numpy(X), tp)
    ref = torch.nn.functional.conv2d(xp, torch.from_numpy(W), torch.from_numpy(B), (2, 1), 0, (1, 2), 2)
    np.testing.assert_allclose(_eval(prog, x=X), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_op_pools_reductions_and_activations():
    @mb.program(input_specs=SPEC)
    def prog(x):
        a = mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
                        exclude_padding_from_average=True)
        m = mb.max_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1])
        g = mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True)
        h = mb.sigmoid_hard(x=mb.add(x=a, y=g), alpha=1 / 6, beta=0.5)
        s = mb.softmax(x=mb.sub(x=mb.mul(x=m, y=h), y=g), axis=1)
        return mb.concat(values=[mb.relu(x=s), mb.silu(x=a), mb.clip(x=m, alpha=-0.5, beta=0.5)], axis=1)

    t = torch.from_numpy(X)
    F = torch.nn.functional
    a = F.avg_pool2d(t, 3, 2, 1, count_include_pad=False)
    m = F.max_pool2d(t, 3, 2, 1)
    g = t.mean((2, 3), keepdim=True)
    h = ((a + g) / 6 + 0.5).clamp(0, 1)
    s = torch.softmax(m * h - g, 1)
    ref = torch.cat([s.relu(), F.silu(a), m.clamp(-0.5, 0.5)], 1)
    np.testing.assert_allclose(_eval(prog, x=X), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_op_shapes_linear_and_batch_norm():
    mean, var = np.arange(4, dtype=np.float32), np.linspace(0.5, 2, 4).astype(np.float32)
    lw = np.random.default_rng(3).standard_normal((5, 49)).astype(np.float32)

    @mb.program(input_specs=SPEC)
    def prog(x):
        bn = mb.batch_norm(x=x, mean=mean, variance=var, gamma=var, beta=mean, epsilon=1e-3)
        p = mb.pad(x=bn, pad=[0, 1, 2, 0], mode="constant", constant_val=0.5)
        r = mb.reshape(x=mb.transpose(x=p, perm=[0, 1, 3, 2]), shape=[4, 8, 9])
        sl = mb.slice_by_index(x=r, begin=[0, 1, 0], end=[4, 8, 9], stride=[1, 1, 2])
        e = mb.expand_dims(x=mb.squeeze(x=mb.reduce_sum(x=sl, axes=[2], keep_dims=True), axes=[2]), axes=[0])
        lin = mb.linear(x=mb.reshape(x=bn, shape=[4, 49]), weight=lw)
        return mb.concat(values=[mb.reshape(x=e, shape=[4, 7]), lin], axis=1)

    t = torch.from_numpy(X)
    bn = (t - torch.from_numpy(mean).view(1, 4, 1, 1)) / torch.sqrt(torch.from_numpy(var).view(1, 4, 1, 1) + 1e-3)
    bn = bn * torch.from_numpy(var).view(1, 4, 1, 1) + torch.from_numpy(mean).view(1, 4, 1, 1)
    p = torch.nn.functional.pad(bn, (2, 0, 0, 1), value=0.5)  # MIL pads the last two axes: H by (0, 1), W by (2, 0)
    r = p.transpose(2, 3).reshape(4, 8, 9)[:, 1:, ::2].sum(2)
    lin = bn.reshape(4, 49) @ torch.from_numpy(lw).T
    ref = torch.cat([r, lin], 1)
    np.testing.assert_allclose(_eval(prog, x=X), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_op_quantize_dequantize_and_cast():
    @mb.program(input_specs=SPEC, opset_version=ct.target.iOS17)
    def prog(x):
        q = mb.quantize(input=x, scale=np.float32(0.02), zero_point=np.int8(3), output_dtype="int8")
        d = mb.dequantize(input=q, scale=np.float32(0.02), zero_point=np.int8(3))
        return mb.cast(x=mb.cast(x=d, dtype="fp16"), dtype="fp32")

    q = (torch.round(torch.from_numpy(X) / 0.02) + 3).clamp(-128, 127)
    ref = ((q - 3) * 0.02).half().float()
    np.testing.assert_allclose(_eval(prog, x=X), ref.numpy(), rtol=0, atol=1e-6)


def test_op_compressed_weights():
    rng = np.random.default_rng(4)
    q = rng.integers(-128, 128, (6, 2, 3, 3)).astype(np.int8)
    scale = rng.uniform(0.01, 0.02, 6).astype(np.float32)
    lut = np.sort(rng.standard_normal((2, 1, 1, 1, 16, 1)).astype(np.float32), axis=-2)  # one palette per 3 channels
    idx = rng.integers(0, 16, (6, 2, 3, 3)).astype(np.uint8)
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=SPEC, opset_version=ct.target.iOS18)
    def prog(x):
        offset = np.full((6, 1, 1, 1), 2, np.int8)
        w1 = mb.constexpr_blockwise_shift_scale(data=q, scale=scale.reshape(6, 1, 1, 1), offset=offset)
        w2 = mb.constexpr_lut_to_dense(indices=mb.const(val=idx.astype(types.np_uint4_dtype)), lut=lut)
        return mb.concat(values=[mb.conv(x=x, weight=w1, groups=2), mb.conv(x=x, weight=w2, groups=2)], axis=1)

    w1 = (q.astype(np.float32) - 2) * scale.reshape(6, 1, 1, 1)
    per_channel = np.repeat(lut[..., 0], 3, axis=0).reshape(6, 1, 1, 1, 16)
    w2 = np.take_along_axis(per_channel, idx[..., None].astype(np.int64), -1)[..., 0]
    t = torch.from_numpy(X)
    ref = torch.cat([torch.nn.functional.conv2d(t, torch.from_numpy(w), groups=2) for w in (w1, w2)], 1)
    np.testing.assert_allclose(_eval(prog, x=X), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_unknown_op_is_named():
    @mb.program(input_specs=SPEC)
    def prog(x):
        return mb.relu(x=mb.cumsum(x=x, axis=1))

    with pytest.raises(UnsupportedOpError, match=r"cumsum \(first: .*supported: .*conv"):
        MilEvaluator(prog.functions["main"])
    assert "cumsum" not in SUPPORTED_OPS and {"conv", "constexpr_lut_to_dense", "quantize"} <= set(SUPPORTED_OPS)


def test_int8_w8a8(tmp_path):
    """W8A8 on Linux: activation ranges from the MIL evaluator, quantize/dequantize pairs, int8 weights, iOS17."""
    torch.manual_seed(0)
    calib, x = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)
    model = _small_net()
    request = ExportRequest((1, 3, 16, 16), "int8", calibration=calib, options={"source": "export"})
    info = BACKEND.export(model, request, tmp_path / "m.mlpackage")
    out = BACKEND.run(tmp_path / "m.mlpackage", x.numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rel(out, ref) < 0.1
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99
    q = info.quantization
    assert q["quantized_activations"] >= 3 and q["compressed_weights"] >= 1 and q["calibration_images"] == 16
    assert q["minimum_deployment_target"] == "iOS17" and any("raised from iOS16 to iOS17" in n for n in info.notes)
    ops = next(n for n in info.notes if n.startswith("MIL ops"))
    assert "quantize x" in ops and "dequantize x" in ops and "constexpr_affine_dequantize" in ops


def test_int8_steps_are_judged_by_the_w8a8_program(tmp_path):
    """equalize / bias_correction are kept or dropped by what the Core ML program itself does on held-out images."""
    torch.manual_seed(0)
    calib = torch.randn(64, 3, 16, 16)
    options = {"equalize": True, "bias_correction": True, "calibrate_method": "percentile"}
    request = ExportRequest((1, 3, 16, 16), "int8", calibration=calib, options=options)
    info = BACKEND.export(_small_net(), request, tmp_path / "m.mlpackage")
    t = info.quantization["transforms"]
    assert t["judged_by"] == "the target's int8 artifact" and t["held_out_images"] == 16
    assert set(t["held_out_int8"]) == {"start", "equalize", "bias_correction"}
    kept = ("equalized_pairs" in t) + ("bias_corrected_layers" in t)
    assert kept + len(t.get("dropped", [])) == 2  # each step was either kept or dropped, and said so
    assert info.quantization["calibration"].startswith("99.999 percentile of |x|")


def test_int8_shipped_model(shipped, tmp_path):
    model, images = shipped
    request = ExportRequest((1, *images.shape[1:]), "int8", calibration=images)
    BACKEND.export(model, request, tmp_path / "m.mlpackage")
    out = BACKEND.run(tmp_path / "m.mlpackage", images.numpy())
    with torch.no_grad():
        ref = model(images).numpy()
    assert _agreement(out, ref) >= 0.85


def test_int8_needs_calibration_and_fp16_compute(tmp_path):
    with pytest.raises(BadInputError, match="calibration images"):
        BACKEND.export(_small_net(), ExportRequest((1, 3, 16, 16), "int8"), tmp_path / "m.mlpackage")
    request = ExportRequest((1, 3, 16, 16), "int8", torch.randn(16, 3, 16, 16), options={"compute_precision": "fp32"})
    with pytest.raises(BadInputError, match="computes in fp16"):
        BACKEND.export(_small_net(), request, tmp_path / "m.mlpackage")
    assert not (tmp_path / "m.mlpackage").exists()



def _wide_net() -> nn.Module:
    """Every layer above coremltools' 2048-weight threshold, so a float weight there is a kept layer, not a skip."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 96, 3, padding=1), nn.ReLU(),
        nn.Conv2d(96, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 48),
    ).eval()


def _layer_ops(path) -> dict[str, tuple[str, str]]:
    """Each conv / linear op of a saved program: (the op its input x comes from, the op its weight comes from)."""
    from edgerep.backends.mil_eval import load_program

    return {op.name: (op.inputs["x"].op.op_type, op.inputs["weight"].op.op_type)
            for op in load_program(path).operations if op.op_type in ("conv", "linear")}


@pytest.mark.parametrize(("options", "kept"), [
    ({"keep_fp": "first,last", "int8_budget": 1}, 3),  # first conv reads the input cast, the linear a reshape
    ({"keep_fp": "2"}, 1),  # after a quantized conv + relu: coremltools' suffix pair is bypassed
])
def test_int8_layers_kept_float(tmp_path, options, kept):
    """keep_fp / int8_budget: the kept layers' ops read float and keep float weights; every other one is W8A8."""
    torch.manual_seed(1)
    calib, x = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)  # 16 images: prepare's judge is off, budget kept
    model, path = _wide_net(), tmp_path / "m.mlpackage"
    info = BACKEND.export(model, ExportRequest((1, 3, 16, 16), "int8", calib, options=options), path)
    q = info.quantization
    assert list(q["float_ops"]) == q["transforms"]["keep_fp"] and len(q["float_ops"]) == kept
    if "int8_budget" in options:
        assert q["transforms"]["budget_layers"][0] in q["float_ops"]
    floats = {op for ops in q["float_ops"].values() for op in ops}
    layers = _layer_ops(path)
    assert len(layers) == 4 and floats < set(layers)
    for name, (source, weight) in layers.items():
        if name in floats:
            assert source != "dequantize" and weight == "const", name
        else:
            assert (source, weight) == ("dequantize", "constexpr_affine_dequantize"), name
    assert q["compressed_weights"] == 4 - kept
    with torch.no_grad():
        ref = model(x).numpy()
    out = BACKEND.run(path, x.numpy())
    assert _rel(out, ref) < 0.05  # all-W8A8 measured 6.4e-3 on this net, first,last + budget 1.7e-3


def test_int8_kept_layer_not_in_the_program_is_refused(tmp_path):
    """A layer whose weight coremltools changed (a constant scale folded into the conv) cannot be kept: one line."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 64, 3), nn.Linear(64, 48)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc((self.conv(x) * 3.0).mean((2, 3)))

    request = ExportRequest((1, 3, 16, 16), "int8", torch.randn(16, 3, 16, 16), options={"keep_fp": "first"})
    with pytest.raises(BadInputError, match=r"layer conv \(\(64, 3, 3, 3\) weight\) has no conv or linear op") as e:
        BACKEND.export(Scaled().eval(), request, tmp_path / "m.mlpackage")
    assert "\n" not in str(e.value) and not (tmp_path / "m.mlpackage").exists()
    request = ExportRequest((1, 3, 16, 16), "int8", torch.randn(16, 3, 16, 16), options={"int8_budget": 5})
    with pytest.raises(BadInputError, match=r"int8_budget=5: the model has 4 conv/linear layers; use 0\.\.4") as e:
        BACKEND.export(_wide_net(), request, tmp_path / "m.mlpackage")
    assert "\n" not in str(e.value) and not (tmp_path / "m.mlpackage").exists()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=64), st.integers(0, 63))
def test_same_weight_is_fp16_tolerant_and_nothing_more(values, at):
    """A weight matches itself stored in fp16 (relative step 2**-11), not a copy with one value off by 1%."""
    weight = np.asarray(values, dtype=np.float32)
    assert _same_weight(weight.astype(np.float16), weight)
    assert not _same_weight(weight.astype(np.float16)[None], weight)  # shape counts
    changed = weight.copy()
    at %= len(values)
    changed[at] = weight[at] * 1.01 if abs(weight[at]) > 1e-3 else 1.0
    assert not _same_weight(changed.astype(np.float16), weight)

def _program(build, shape: tuple[int, ...] = (1, 2, 3, 3)) -> object:
    from coremltools.converters.mil.mil import Function

    with Function({"x": mb.TensorSpec(shape=shape)}, opset_version=ct.target.iOS17) as fn:
        fn.set_outputs(build(fn.inputs["x"]))
    return fn


def test_activation_ranges_cover_every_image():
    """The range is over all images (coremltools 9's own calibration keeps only the last sample's)."""
    fn = _program(lambda x: [mb.mul(x=mb.relu(x=x, name="r"), y=np.float32(2.0), name="m")])
    ramp = torch.linspace(-3, 1, 18).view(2, 3, 3)
    images = torch.stack([torch.full((2, 3, 3), 5.0), torch.full((2, 3, 3), -1.0), ramp])
    stats = activation_ranges(MilEvaluator(fn), images)
    assert stats["x"] == {"rmin": -3.0, "rmax": 5.0}
    assert stats["r"] == {"rmin": 0.0, "rmax": 5.0}
    assert stats["m"] == {"rmin": 0.0, "rmax": 10.0}


def test_percentile_ranges_ignore_a_rare_outlier():
    """One value in 655,360 no longer sets the grid: the range ends near the largest normal values."""
    fn = _program(lambda x: [mb.relu(x=x, name="r")], shape=(1, 4, 64, 64))
    torch.manual_seed(0)
    images = torch.randn(40, 4, 64, 64)
    images[3, 1, 5, 7] = 100.0
    minmax = activation_ranges(MilEvaluator(fn), images)
    percentile = activation_ranges(MilEvaluator(fn), images, "percentile")
    assert minmax["x"]["rmax"] == minmax["r"]["rmax"] == 100.0
    normal = images.abs().flatten().topk(2).values[1].item()  # the largest |x| but the outlier
    for name in ("x", "r"):
        assert 3.0 < percentile[name]["rmax"] <= normal + 100.0 / 2048  # at most one histogram bin above
    assert percentile["x"]["rmin"] == max(minmax["x"]["rmin"], -percentile["x"]["rmax"])  # symmetric clip
    assert percentile["r"]["rmin"] == 0.0


def test_bad_calibrate_method_is_refused():
    fn = _program(lambda x: [mb.relu(x=x, name="r")])
    with pytest.raises(BadInputError, match="calibrate_method='kl'.*minmax, percentile"):
        activation_ranges(MilEvaluator(fn), torch.zeros(1, 2, 3, 3), "kl")


def test_concat_inputs_and_output_share_one_range():
    fn = _program(lambda x: [mb.concat(values=[mb.relu(x=x, name="a"), mb.mul(x=x, y=np.float32(3.0), name="b")],
                                       axis=1, name="c"), mb.sigmoid(x=x, name="s")])
    stats = {"a": {"rmin": 0.0, "rmax": 1.0}, "b": {"rmin": -6.0, "rmax": 2.0}, "c": {"rmin": -6.0, "rmax": 2.0},
             "s": {"rmin": 0.1, "rmax": 0.9}}
    _share_concat_ranges(fn, stats)
    assert stats["a"] == stats["b"] == stats["c"] == {"rmin": -6.0, "rmax": 2.0}
    assert stats["s"] == {"rmin": 0.1, "rmax": 0.9}  # not part of a concat: untouched


def _signed_net() -> nn.Module:
    """Conv -> ReLU (never-negative tensors) and a conv without one (signed), above coremltools' weight threshold."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 96, 3, padding=1), nn.ReLU(),
        nn.Conv2d(96, 64, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 48),
    ).eval()


def _quantize_grids(path) -> list[tuple[str, str, int | None]]:
    """Each quantize op of a saved program: (the op it reads, its output dtype, its zero point or None)."""
    from coremltools.converters.mil.mil import types

    from edgerep.backends.mil_eval import load_program

    out = []
    for op in load_program(path).operations:
        if op.op_type == "quantize":
            zp = op.inputs.get("zero_point")
            out.append((op.inputs["input"].op.op_type, types.builtin_to_string(op.outputs[0].dtype),
                        None if zp is None else int(zp.val)))
    return out


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric", "unsigned"])
def test_int8_activation_schemes(tmp_path, scheme):
    """activations: the grid of every quantize op; the Linux evaluator stays close to torch for each."""
    torch.manual_seed(2)
    calib, x = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)
    model, path = _signed_net(), tmp_path / "m.mlpackage"
    options = {"activations": scheme, "float_output": False}  # the logits' pair too
    info = BACKEND.export(model, ExportRequest((1, 3, 16, 16), "int8", calib, options=options), path)
    assert info.quantization["activations"].startswith(f"{scheme}, per tensor")
    grids = _quantize_grids(path)
    assert {src for src, _, _ in grids} == {"cast", "relu", "conv", "reshape", "linear"}
    for src, dtype, zp in grids:
        if scheme == "symmetric":
            assert (dtype, zp) == ("int8", None), src
        elif src == "relu":  # never negative: all 256 levels, no zero point (-128 became uint8)
            assert (dtype, zp) == ("uint8", None), src
        elif scheme == "unsigned":
            assert (dtype, zp) == ("int8", None), src
        else:
            assert dtype == "int8" and zp is not None and zp != 0, src  # signed, skewed: a zero point
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rel(BACKEND.run(path, x.numpy()), ref) < 0.05  # measured 0.007-0.009 for the three


@pytest.mark.parametrize("options", [{"float_output": True}, {"float_output": True, "activations": "asymmetric"},
                                     {"float_output": False}])
def test_int8_float_output(tmp_path, options):
    """float_output: no quantize after the last op (the linear feeds the fp32 cast directly); else its pair stays."""
    from edgerep.backends.mil_eval import load_program

    torch.manual_seed(3)
    calib, x = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)
    model, path = _signed_net(), tmp_path / "m.mlpackage"
    info = BACKEND.export(model, ExportRequest((1, 3, 16, 16), "int8", calib, options=options), path)
    ops = load_program(path).operations
    last = [op for op in ops if op.op_type not in ("const", "cast")][-1]
    quantized = {op.inputs["input"].op.op_type for op in ops if op.op_type == "quantize"}
    if options["float_output"]:
        assert last.op_type == "linear" and "linear" not in quantized and info.quantization["output"] == "float"
        assert last.inputs["x"].op.op_type == "dequantize"  # its input is still int8
    else:
        assert last.op_type == "dequantize" and "linear" in quantized
        assert info.quantization["output"] == "int8-rounded"
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rel(BACKEND.run(path, x.numpy()), ref) < 0.05


@pytest.mark.parametrize("float_output", [True, False])
def test_int8_float_output_with_float_last_layer(tmp_path, float_output):
    """keep_fp=last already leaves the logits float (no pair after the float linear), float_output or not."""
    request = ExportRequest((1, 3, 16, 16), "int8", torch.randn(16, 3, 16, 16),
                            options={"keep_fp": "last", "float_output": float_output})
    info = BACKEND.export(_signed_net(), request, tmp_path / "m.mlpackage")
    assert info.quantization["output"] == "float" and "linear" not in {s for s, _, _ in _quantize_grids(
        tmp_path / "m.mlpackage")}


def test_int8_bad_activation_scheme_is_one_line(tmp_path):
    from edgerep.export.targets import get_target

    for bad in ({"activations": "affine"}, {"float_output": "yes"}):
        with pytest.raises(BadInputError) as e:
            get_target("coreml").resolve_options(bad)
        assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)
    request = ExportRequest((1, 3, 16, 16), "int8", torch.randn(16, 3, 16, 16), options={"activations": "affine"})
    with pytest.raises(BadInputError, match=r"activations='affine' is not allowed; use one of: symmetric, asym"):
        BACKEND.export(_small_net(), request, tmp_path / "m.mlpackage")
    assert not (tmp_path / "m.mlpackage").exists()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-300, 300, width=32), min_size=4, max_size=4), st.floats(0.0625, 4.0, width=32),
       st.sampled_from(["int8", "uint8"]), st.integers(-128, 255), st.booleans())
def test_quantize_dequantize_zero_point_exact(values, scale, dtype, zero, with_zero):
    """quantize / dequantize with a zero point equal clip(round_half_even(x / s) + z) and (q - z) * s exactly (fp32)."""
    from coremltools.converters.mil.mil import Function

    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    zero = min(max(zero, lo), hi)
    s = np.float32(scale)
    zp = (np.int8 if dtype == "int8" else np.uint8)(zero) if with_zero else None
    x = np.asarray(values, dtype=np.float32).reshape(1, 4)
    with Function({"x": mb.TensorSpec(shape=(1, 4))}, opset_version=ct.target.iOS17) as fn:
        q = mb.quantize(input=fn.inputs["x"], scale=s, zero_point=zp, output_dtype=dtype, name="q")
        fn.set_outputs([q, mb.dequantize(input=q, scale=s, zero_point=zp, name="d")])
    out = MilEvaluator(fn)({"x": x})
    z = np.float32(zero if with_zero else 0)
    expect_q = np.clip(np.rint(x / s) + z, lo, hi)  # np.rint: round half to even, as MIL specifies
    assert out["q"].dtype == np.dtype(dtype) and np.array_equal(out["q"].astype(np.float32), expect_q)
    assert np.array_equal(out["d"], (expect_q - z) * s)


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric", "unsigned"])
def test_int8_dead_layer_exports(tmp_path, scheme):
    """An all-zero activation (every ReLU input negative) gets a valid grid: coremltools' own is scale 0 there."""
    model = _signed_net()
    with torch.no_grad():
        model[0].bias.fill_(-1e3)
    calib, x = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)
    request = ExportRequest((1, 3, 16, 16), "int8", calib, options={"activations": scheme})
    BACKEND.export(model, request, tmp_path / "m.mlpackage")
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rel(BACKEND.run(tmp_path / "m.mlpackage", x.numpy()), ref) < 0.05  # measured 1.3e-3
