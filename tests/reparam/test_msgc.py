"""MobileNetV2-MSGC: the original checkpoint reproduced, and its dynamic and static deploy forms."""

from __future__ import annotations

import pytest
import torch
from conftest import REL_TOL_FP32, REL_TOL_FP64, shared_path
from torch import nn

import edgerep
from edgerep.checkpoints.layouts import get_layout
from edgerep.errors import BadInputError
from edgerep.msgc import GateStats, calibrate, select_channels, to_dynamic, to_static
from edgerep.msgc.modules import StaticMSGCBlock
from edgerep.proof.metrics import count_macs
from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.zoo import create_model
from edgerep.zoo.mobilenetv2 import Stage
from edgerep.zoo.msgc import MaskGen, MobileNetV2MSGC

# Every block kind: t = 1 (no expansion), stride 2, and residual blocks; 4 heads divide every width.
TINY = (Stage(1, 8, 1, 1), Stage(2, 8, 2, 2), Stage(3, 16, 2, 2))


def tiny(heads: int = 4, attention: bool = False, seed: int = 0) -> MobileNetV2MSGC:
    torch.manual_seed(seed)
    return MobileNetV2MSGC(
        num_classes=10, stages=TINY, stem_channels=16, num_features=32, heads=heads, attention=attention
    )


def open_gates(model: nn.Module, seed: int, mean: float = 0.0) -> nn.Module:
    """Random BN statistics and gate biases near ``mean``, so each head keeps about half its channels."""
    gen = torch.Generator().manual_seed(seed)
    randomize_bn(model, gen)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MaskGen):
                m.conv_expand.bias.copy_(torch.randn(m.conv_expand.bias.shape, generator=gen) * 0.1 + mean)
    return model.eval()


def constant_gates(model: nn.Module, keep: float, seed: int = 0) -> nn.Module:
    """Gates that ignore the input: each (head, channel) kept with probability ``keep``, the same for every image."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MaskGen):
                m.conv_expand.weight.zero_()
                on = torch.rand(m.conv_expand.bias.shape, generator=gen) < keep
                m.conv_expand.bias.copy_(torch.where(on, 1.0, -1.0))
    return model


def kept_fraction(model: nn.Module, x: torch.Tensor) -> float:
    masks = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: masks.append(out)) for m in model.modules()
             if isinstance(m, MaskGen)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return torch.cat([m.flatten() for m in masks]).mean().item()


def test_original_checkpoint_reproduced():
    path = shared_path("fixtures", "checkpoints", "official_msgc_mobilenetv2_noatt.pt")
    ckpt = torch.load(path, weights_only=True)
    model, info = edgerep.load_model("mobilenetv2_msgc", path)
    assert info.layout == "original" and info.form == "train"
    renamed, _ = get_layout("original", "msgc").rename(ckpt["state_dict"])
    assert set(renamed) == set(model.state_dict())  # every key mapped, none left over
    with torch.no_grad():
        train = model(ckpt["input"])
        dynamic = to_dynamic(model)(ckpt["input"])
    assert output_error(ckpt["output_train"], train).rel <= REL_TOL_FP32
    assert output_error(ckpt["output_train"], dynamic).rel <= REL_TOL_FP32
    # the fixture's gates really are per-sample and partial, so the reproduction exercises them
    assert 0.2 < kept_fraction(model, ckpt["input"]) < 0.8


def test_zoo_names_and_shapes():
    model = create_model("mobilenetv2_msgc", heads=8)
    sd = model.state_dict()
    assert sd["blocks.0.0.conv_pw.weight"].shape == (16, 32, 1, 1) and model.blocks[0][0].conv_pw.groups == 8
    assert sd["blocks.1.0.maskgen.conv_expand.weight"].shape == (8 * 96, 4, 1, 1)
    assert not any("attgen" in k for k in sd)
    att = create_model("mobilenetv2_msgc_att").state_dict()
    assert att["blocks.6.0.attgen.conv_expand.weight"].shape == (4 * 960, 40, 1, 1)
    with pytest.raises(ValueError, match="heads=3 must divide"):
        create_model("mobilenetv2_msgc", heads=3)


@pytest.mark.parametrize("heads,attention", [(1, False), (2, False), (4, False), (4, True), (8, True)])
def test_dynamic_equals_train_form(heads, attention):
    model = open_gates(tiny(heads, attention), 1)
    x = torch.randn(3, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    assert 0.2 < kept_fraction(model, x) < 0.8  # masks differ per head, channel and image
    for dtype, tol in ((torch.float64, REL_TOL_FP64), (torch.float32, REL_TOL_FP32)):
        m = model.to(dtype)
        with torch.no_grad():
            err = output_error(m(x.to(dtype)), to_dynamic(m)(x.to(dtype)))
        assert err.rel <= tol, f"{dtype}: {err}"
    model.float()


def test_static_full_keep_equals_dynamic_when_masks_are_all_on():
    model = constant_gates(open_gates(tiny(), 3), keep=1.0)
    x = torch.randn(4, 3, 32, 32)
    static = to_static(model, x, keep_ratio=1.0)
    with torch.no_grad():
        assert output_error(to_dynamic(model)(x), static(x)).rel <= REL_TOL_FP32
    # every head reads every channel: plain dense projections, no gather left
    assert all(b.gather is None and isinstance(b.project, nn.Conv2d) for b in static.blocks)


@pytest.mark.parametrize("attention", [False, True])
def test_static_majority_masks_equal_dynamic_when_masks_are_constant(attention):
    model = constant_gates(open_gates(tiny(attention=attention), 4), keep=0.4)
    x = torch.randn(4, 3, 32, 32)
    static = to_static(model, x, threshold=0.5)
    with torch.no_grad():
        assert output_error(to_dynamic(model)(x), static(x)).rel <= REL_TOL_FP32
    blocks = [b for stage in model.blocks for b in stage]
    for b, s in zip(blocks, static.blocks):
        gate = (b.maskgen.conv_expand.bias >= 0).reshape(b.heads, -1)
        used = int(gate.any(0).sum())
        assert s.dw.out_channels == used  # channels no head keeps are not computed at all
        assert s.gather is not None and len(s.gather) == int(gate.sum())
    # heads of unequal size (split convs) and a t = 1 block reading a subset of its input both occur
    assert any(isinstance(s.project, nn.ModuleList) for s in static.blocks)
    assert static.blocks[0].select is not None


def test_static_macs_fall_with_keep_ratio_and_unused_channels_are_pruned():
    model = open_gates(tiny(), 5)
    calib = torch.randn(16, 3, 32, 32)
    stats = calibrate(model, calib)
    assert stats[0].frequency.shape == (4, 16) and stats[0].images == 16
    macs = {r: count_macs(to_static(model, stats, keep_ratio=r), (3, 32, 32)) for r in (1.0, 0.75, 0.5, 0.25)}
    dynamic = count_macs(to_dynamic(model), (3, 32, 32))
    assert dynamic > macs[1.0] > macs[0.75] > macs[0.5] > macs[0.25]
    kept = select_channels(stats, keep_ratio=0.25)
    for per_head, s in zip(kept, to_static(model, stats, keep_ratio=0.25).blocks):
        assert all(len(k) == len(per_head[0]) for k in per_head)  # equal heads: one grouped conv
        assert isinstance(s, StaticMSGCBlock) and s.project.groups == len(per_head)
        assert s.dw.out_channels == len(torch.unique(torch.cat(per_head)))


def test_bias_correction_matches_the_dynamic_mean_output_on_calibration_images():
    model = open_gates(tiny(attention=True), 8)
    x = torch.randn(6, 3, 32, 32)
    dynamic = to_dynamic(model)
    with torch.no_grad():
        x0 = dynamic.act1(dynamic.stem(x))  # the first block's input: the same in every form
        ref = dynamic.blocks[0](x0).mean((0, 2, 3))
        for correct in (True, False):
            static = to_static(model, x, keep_ratio=0.5, bias_correction=correct)
            err = output_error(ref, static.blocks[0](x0).mean((0, 2, 3))).rel
            assert (err <= REL_TOL_FP32) == correct, (correct, err)


def test_select_channels_prefers_frequent_channels_and_keeps_one_per_head():
    model = constant_gates(open_gates(tiny(), 6), keep=0.0)  # every gate closed
    stats = calibrate(model, torch.randn(2, 3, 32, 32))
    assert all(len(k) == 1 for heads in select_channels(stats, threshold=0.5) for k in heads)
    freq = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    stats = [GateStats(freq, torch.zeros_like(freq), freq, freq, 10)]
    assert select_channels(stats, keep_ratio=0.5)[0][0].tolist() == [1, 3]
    assert select_channels(stats, threshold=0.5)[0][0].tolist() == [1, 2, 3]


def test_bad_input_is_refused():
    model = tiny()
    with pytest.raises(BadInputError, match="not both"):
        to_static(model, torch.randn(2, 3, 32, 32), keep_ratio=0.5, threshold=0.5)
    with pytest.raises(BadInputError, match="keep_ratio must be"):
        to_static(model, torch.randn(2, 3, 32, 32), keep_ratio=0.0)
    with pytest.raises(BadInputError, match="MobileNetV2-MSGC"):
        to_dynamic(create_model("mobilenetv2_100"))
    with pytest.raises(BadInputError, match="calibration images"):
        calibrate(model, torch.randn(3, 32, 32))


RUNTIMES = {"onnx": "onnxruntime", "tflite": "ai_edge_litert", "coreml": "coremltools"}


@pytest.mark.parametrize("target", [
    "onnx", pytest.param("tflite", marks=pytest.mark.slow), pytest.param("coreml", marks=pytest.mark.slow)])
@pytest.mark.parametrize("form", ["dynamic", "static"])
def test_export_validates(form, target, tmp_path):
    pytest.importorskip(RUNTIMES[target])
    from edgerep.export.pipeline import export
    from edgerep.images import Preprocess

    model = open_gates(tiny(), 7)
    net = to_dynamic(model) if form == "dynamic" else to_static(model, torch.randn(8, 3, 32, 32), keep_ratio=0.5)
    result = export(
        net, name=f"msgc_{form}", target=target, precision="fp32", input_size=(3, 32, 32), output_dir=tmp_path,
        preprocess=Preprocess.for_input((3, 32, 32), (0.5,) * 3, (0.5,) * 3, 1.0),
    )
    assert result.validation.passed and result.artifact.exists()
    assert all(s.rel <= 1e-5 for s in result.validation.sets)


def test_original_layout_maps_every_kind_of_key():
    rename = get_layout("original", "msgc").rename
    original = {
        "features.0.0.weight": "conv_stem.weight",
        "features.1.conv.0.0.weight": "blocks.0.0.conv_dw.weight",
        "features.1.conv.2.running_var": "blocks.0.0.bn2.running_var",
        "features.2.conv.1.0.weight": "blocks.1.0.conv_dw.weight",
        "features.4.conv.2.weight": "blocks.2.0.conv_pwl.weight",
        "features.17.conv.3.bias": "blocks.6.0.bn3.bias",
        "features.16.maskgen.conv.3.bias": "blocks.5.2.maskgen.conv_expand.bias",
        "features.7.attgen.conv.1.weight": "blocks.3.0.attgen.bn.weight",
        "features.18.1.running_mean": "bn2.running_mean",
        "classifier.1.weight": "classifier.weight",
    }
    renamed, origin = rename({k: torch.zeros(1) for k in original})
    assert {origin[k]: k for k in renamed} == original
    assert set(original.values()) <= set(create_model("mobilenetv2_msgc_att").state_dict())


def test_cli_deploy_uses_the_dynamic_form_and_refuses_to_write_it(tmp_path, capsys):
    import json

    from edgerep.cli import main

    path = str(shared_path("fixtures", "checkpoints", "official_msgc_mobilenetv2_noatt.pt"))
    assert main(["deploy", "mobilenetv2_msgc", "-c", path, "--no-images", "--no-latency", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["blocks_fused"] == {"MSGCBlock -> dynamic form": 17}
    assert report["passed"] and report["worst_rel"] <= REL_TOL_FP32
    assert main(["deploy", "mobilenetv2_msgc", "-c", path, "-o", str(tmp_path / "d.pt")]) == 2
    assert "no checkpoint layout to load back" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
