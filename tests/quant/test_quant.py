"""edgerep.quant: equalization is exact, bias correction removes the mean shift, the options reach the
backends, sensitivity finds a damaged layer, and the shipped model's int8 keeps its measured agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgerep.backends import ExportRequest, get_backend
from edgerep.checkpoints import load_model
from edgerep.defaults import default_images_dir, default_model_name, default_model_path, default_preprocess
from edgerep.errors import BadInputError
from edgerep.export.targets import get_target
from edgerep.images import load_images
from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.quant import calibration, correct_bias, equalize, fakequant, prepare
from edgerep.quant.equalize import input_channel_range
from edgerep.quant.graph import chains, resolve_layers
from edgerep.quant.sensitivity import format_sensitivity, layer_sensitivity
from edgerep.reparam import reparameterize
from edgerep.reparam.blocks.repvgg import RepVGGBlock


def _plain(widths: list[int], depthwise: list[bool], seed: int) -> nn.Sequential:
    """conv -> BN -> ReLU stacks (a depthwise conv where asked), then pool + linear: what CLE rescales."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    prev = 3
    for w, dw in zip(widths, depthwise):
        out = prev if dw else w
        layers += [nn.Conv2d(prev, out, 3, padding=1, groups=prev if dw else 1, bias=False), nn.BatchNorm2d(out),
                   nn.ReLU()]
        prev = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, 10)]
    net = nn.Sequential(*layers)
    for m in net.modules():  # uneven channel scales, like fused re-param kernels
        if isinstance(m, nn.Conv2d):
            with torch.no_grad():
                m.weight.mul_(torch.rand(m.out_channels, 1, 1, 1) * 20 + 0.05)
    return randomize_bn(net, torch.Generator().manual_seed(seed)).eval()


@given(
    widths=st.lists(st.integers(2, 12), min_size=2, max_size=4),
    depthwise=st.lists(st.booleans(), min_size=4, max_size=4),
    seed=st.integers(0, 10_000),
)
def test_equalization_is_exact_and_equalizes(widths, depthwise, seed) -> None:
    depthwise = [False] + depthwise[1 : len(widths)]  # the first conv sees 3 input channels
    net = _plain(widths, depthwise, seed)
    x = torch.randn(4, 3, 12, 12)
    eq, pairs = equalize(net)
    assert pairs == len(widths) - 1  # every conv -> BN -> ReLU -> conv link, depthwise included
    with torch.no_grad():
        assert output_error(net(x), eq(x)).rel < 1e-5
    for c in chains(eq):
        r1 = eq.get_submodule(c.first).weight.abs().flatten(1).amax(1)
        r2 = input_channel_range(eq.get_submodule(c.second))
        torch.testing.assert_close(r1, r2, rtol=1e-3, atol=1e-6)


def test_equalization_of_a_fused_repvgg_stack_is_exact() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(RepVGGBlock(3, 8), RepVGGBlock(8, 8), RepVGGBlock(8, 8, groups=8), RepVGGBlock(8, 16, stride=2))
    deployed = reparameterize(randomize_bn(net, torch.Generator().manual_seed(1)).eval())
    eq, pairs = equalize(deployed)
    assert pairs == 3
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert output_error(deployed(x), eq(x)).rel < 1e-5


def test_bias_correction_removes_the_mean_shift_of_weight_rounding() -> None:
    net = _plain([16, 16], [False, True], seed=3)
    x = torch.rand(64, 3, 12, 12) + 0.5  # positive inputs: a rounding error in the weights shifts the mean
    conv = "3"  # the depthwise conv: 9 weights per channel round coarsely

    def mean_error(model: nn.Module) -> float:
        ref_out, q_out = {}, {}
        layer = model.get_submodule(conv)
        h = layer.register_forward_hook(lambda _m, _i, o: ref_out.setdefault("y", o))
        with torch.no_grad():
            model(x)
            h.remove()
            w = layer.weight.data
            layer.weight.data = fakequant.weight(w, 4)
            h = layer.register_forward_hook(lambda _m, _i, o: q_out.setdefault("y", o))
            model(x)
            h.remove()
            layer.weight.data = w
        return (ref_out["y"] - q_out["y"]).mean((0, 2, 3)).abs().max().item()

    folded, _ = equalize(net)  # BN folded, so the conv's output is what the backend quantizes
    corrected, layers = correct_bias(folded, x, bits=4)
    assert layers == 3
    # the corrected model's quantized output should match the *original* float output's mean
    with torch.no_grad():
        y_ref = nn.Sequential(*list(folded)[:4])(x)
        layer = corrected.get_submodule(conv)
        w = layer.weight.data
        layer.weight.data = fakequant.weight(w, 4)
        y_q = nn.Sequential(*list(corrected)[:4])(x)
        layer.weight.data = w
    after = (y_ref - y_q).mean((0, 2, 3)).abs().max().item()
    before = mean_error(folded)
    assert after < 0.2 * before, (before, after)


def test_keep_fp_resolves_first_last_and_refuses_unknown_names() -> None:
    net = _plain([4, 4], [False, False], seed=0)
    x = torch.randn(1, 3, 8, 8)
    assert resolve_layers(net, "first,last", x) == ["0", "8"]
    assert resolve_layers(net, "none", x) == []
    with pytest.raises(BadInputError, match="keep_fp: 'conv9' is not a conv or linear layer"):
        resolve_layers(net, "conv9", x)


def test_calibration_choices_reach_onnxruntime(monkeypatch, tmp_path: Path) -> None:
    import onnxruntime.quantization as oq

    seen = {}

    class Stop(Exception):
        pass

    def fake_quantize_static(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(oq, "quantize_static", fake_quantize_static)
    net = _plain([4, 4], [False, False], seed=0)
    opts = get_target("onnx").resolve_options(
        {"exporter": "torchscript", "calibrate_method": "entropy", "keep_fp": "last", "reduce_range": "false"}
    )
    with pytest.raises(Stop):
        get_backend("onnx").export(net, ExportRequest((1, 3, 8, 8), "int8", torch.randn(16, 3, 8, 8), "nchw", opts),
                                   tmp_path / "m.onnx")
    assert seen["calibrate_method"] == oq.CalibrationMethod.Entropy
    assert seen["reduce_range"] is False and len(seen["nodes_to_exclude"]) == 1  # the linear layer's node


def test_calibration_choices_reach_pt2e(monkeypatch, tmp_path: Path) -> None:
    from edgerep.backends import tflite

    asked = []

    class Stop(BadInputError):  # an edgerep error: the backend passes it through unchanged
        pass

    def spy(name: str, per_channel: bool = True):
        asked.append(name)
        raise Stop

    monkeypatch.setattr(tflite.calibration, "tflite_config", spy)
    opts = get_target("tflite").resolve_options({"calibrate_method": "percentile"})
    with pytest.raises(Stop):
        tflite.BACKEND.export(_plain([4], [False], 0), ExportRequest((1, 3, 8, 8), "int8", torch.randn(16, 3, 8, 8),
                                                                      "nchw", opts), tmp_path / "m.tflite")
    assert asked == ["percentile"]
    monkeypatch.undo()
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    def observer(name: str):
        return calibration.tflite_config(name).input_activation.observer_or_fake_quant_ctr.p.func

    assert observer("minmax") is MinMaxObserver and observer("mse") is HistogramObserver
    assert issubclass(observer("percentile"), HistogramObserver) and observer("percentile") is not HistogramObserver


def test_percentile_observer_clips_outliers_that_minmax_keeps() -> None:
    x = torch.cat([torch.randn(100_000), torch.tensor([500.0])])
    ranges = {}
    for name in ("minmax", "percentile"):
        obs = calibration.tflite_config(name).input_activation.observer_or_fake_quant_ctr()
        obs(x)
        scale, _ = obs.calculate_qparams()
        ranges[name] = scale.item() * 255
    assert ranges["minmax"] > 500 and ranges["percentile"] < 20


def test_sensitivity_ranks_a_damaged_layer_first() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)).eval()
    with torch.no_grad():  # a huge unused channel in layer "4"'s input: its per-tensor int8 range drowns the rest
        net[2].bias[0] = 1000.0
        net[4].weight[:, 0] = 0.0
    x = torch.randn(128, 3, 8, 8)
    report = layer_sensitivity(net, x, torch.randint(0, 10, (128,)))
    assert [r.layer for r in report.layers][0] == "4" and report.layers[0].agreement_change < -0.2
    assert all(r.agreement_change > -0.1 for r in report.layers[1:])
    assert len(report.layers) == 4 and report.top1_fp32 is not None
    text = format_sensitivity(report, top=2)
    assert text.splitlines()[3].split()[1] == "4" and "2 more layers" in text
    gain = layer_sensitivity(net, x, mode="all_but")
    assert gain.layers[0].layer == "4" and gain.layers[0].agreement_change > 0.2


def test_prepare_records_what_it_did() -> None:
    net = _plain([4, 4], [False, False], seed=0)
    model, record = prepare(net, torch.randn(16, 3, 8, 8), equalize=True, bias_correction=True, keep_fp="first")
    assert record == {"keep_fp": ["0"], "equalized_pairs": 1, "bias_corrected_layers": 2}
    assert model is not net and isinstance(model.get_submodule("1"), nn.Identity)  # BN folded into conv 0


@pytest.mark.slow
def test_shipped_model_onnx_int8_keeps_agreement(tmp_path: Path) -> None:
    """Calibrate on one half of the shipped photos, measure on the other (measured: see the assert; ~60 s)."""
    model, _ = load_model(default_model_name(), default_model_path())
    deployed = reparameterize(model.float().eval())
    batch = load_images(default_images_dir(), default_preprocess())
    calib, test = batch.images[::2], batch.images[1::2]
    backend = get_backend("onnx")
    opts = get_target("onnx").resolve_options({"exporter": "torchscript"})
    path = tmp_path / "m.onnx"
    backend.export(deployed, ExportRequest((1, 3, 32, 32), "int8", calib, "nchw", opts), path)
    out = torch.from_numpy(backend.run(path, test.numpy()))
    with torch.no_grad():
        ref = deployed(test)
    assert (out.argmax(1) == ref.argmax(1)).double().mean().item() >= 0.88


def test_reduce_range_auto_keeps_the_weights_closer_to_pytorch(tmp_path: Path) -> None:
    net = _plain([8, 8], [False, False], seed=2)
    backend = get_backend("onnx")
    opts = get_target("onnx").resolve_options({"exporter": "torchscript"})
    info = backend.export(net, ExportRequest((1, 3, 8, 8), "int8", torch.randn(32, 3, 8, 8), "nchw", opts),
                          tmp_path / "m.onnx")
    scores = info.quantization["transforms"]["auto_cosine_by_weight_bits"]
    assert set(scores) == {7, 8} and all(0 < s <= 1.0 + 1e-9 for s in scores.values())
    assert ("7-bit" in info.quantization["weights"]) == (scores[7] > scores[8])


@pytest.mark.slow
def test_checkpoint_sensitivity_of_the_shipped_model() -> None:
    """What `edgerep eval --sensitivity` prints: every conv / linear layer, labels matched by class name (~40 s)."""
    from edgerep.quant.sensitivity import checkpoint_sensitivity

    report = checkpoint_sensitivity(default_model_path(), default_images_dir())
    assert report.images == 200 and abs(report.top1_fp32 - 0.69) < 1e-9  # the recipe's shipped top-1
    assert len(report.layers) == 96 and report.layers[0].agreement_change <= report.layers[-1].agreement_change


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400_000), st.floats(0.01, 1e4), st.integers(0, 2**31 - 1))
def test_percentile_bound_is_the_bin_that_reaches_the_percentile(n, spread, seed):
    """At least PERCENTILE % of |x| lie at or below the bound, fewer below the bound one bin lower."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * spread).abs()
    top = x.max().item()
    bins = calibration.HISTOGRAM_BINS
    bound = calibration.percentile_bound(torch.histc(x, bins, 0, top), top)
    share = calibration.PERCENTILE / 100
    width = top / bins
    assert (x <= bound + 1e-9 * top).double().mean() >= share
    assert (x <= bound - width - 1e-9 * top).double().mean() < share
