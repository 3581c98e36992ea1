"""MobileNetV2: timm's ``mobilenetv2_100`` names, shapes and size; a plain net that conversion leaves alone."""

import operator

import torch

from edgerep.reparam import count_blocks, reparameterize
from edgerep.zoo import create_model, list_models
from edgerep.zoo.mobilenetv2 import STAGES, InvertedResidual

TIMM_PARAMS = 3504872  # timm 1.0.31 mobilenetv2_100


def _bn(prefix: str) -> set[str]:
    return {f"{prefix}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def timm_keys() -> set[str]:
    """The state-dict keys timm's EfficientNet builder gives mobilenetv2_100 (``ds`` then ``ir`` blocks)."""
    keys = {"conv_stem.weight", "conv_head.weight", "classifier.weight", "classifier.bias"}
    keys |= _bn("bn1") | _bn("bn2")
    for i, st in enumerate(STAGES):
        for j in range(st.n):
            p = f"blocks.{i}.{j}"
            if st.t == 1:
                keys |= {f"{p}.conv_dw.weight", f"{p}.conv_pw.weight"} | _bn(f"{p}.bn1") | _bn(f"{p}.bn2")
            else:
                keys |= {f"{p}.conv_pw.weight", f"{p}.conv_dw.weight", f"{p}.conv_pwl.weight"}
                keys |= _bn(f"{p}.bn1") | _bn(f"{p}.bn2") | _bn(f"{p}.bn3")
    return keys


def test_layout_and_size_are_timms():
    assert "mobilenetv2_100" in list_models("mobilenetv2")
    model = create_model("mobilenetv2_100")
    sd = model.state_dict()
    assert set(sd) == timm_keys() and len(sd) == 314
    assert sum(p.numel() for p in model.parameters()) == TIMM_PARAMS
    shapes = {
        "conv_stem.weight": (32, 3, 3, 3),
        "blocks.0.0.conv_dw.weight": (32, 1, 3, 3),
        "blocks.0.0.conv_pw.weight": (16, 32, 1, 1),
        "blocks.1.0.conv_pw.weight": (96, 16, 1, 1),
        "blocks.1.0.conv_dw.weight": (96, 1, 3, 3),
        "blocks.6.0.conv_pwl.weight": (320, 960, 1, 1),
        "conv_head.weight": (1280, 320, 1, 1),
        "classifier.weight": (1000, 1280),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert create_model("mobilenetv2_100", num_classes=5).classifier.out_features == 5


def test_residuals_strides_and_graph():
    model = create_model("mobilenetv2_100").eval()
    irs = {n: m for n, m in model.named_modules() if isinstance(m, InvertedResidual)}
    assert len(irs) == 16
    # A residual only where the block keeps shape: every block of a stage but the first (t=6 stages with n>1).
    assert sorted(n for n, m in irs.items() if m.has_skip) == [
        "blocks.1.1", "blocks.2.1", "blocks.2.2", "blocks.3.1", "blocks.3.2", "blocks.3.3",
        "blocks.4.1", "blocks.4.2", "blocks.5.1", "blocks.5.2",
    ]
    gm = torch.fx.symbolic_trace(model)
    mods = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in mods) == 52
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in mods) == 52
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)]
    assert len(adds) == 10
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 1000)
        assert model.forward_features(x).shape == (1, 1280, 2, 2)  # output stride 32
        # No re-param blocks: conversion is a copy that computes the same thing.
        assert count_blocks(model) == {}
        assert torch.equal(reparameterize(model)(x), out)
