"""MobileOne: the block fuses exactly; the zoo models are timm's, in train and deploy form."""

import pytest
import torch
from conftest import (
    ODD_KERNELS,
    REL_TOL_FP32,
    STRIDES,
    assert_fuses_exactly,
    block_channels,
    dilations,
    meta_model,
    run_timm_fixture,
    spatial,
)
from hypothesis import given
from hypothesis import strategies as st

from edgerep.proof.numerics import output_error
from edgerep.reparam import count_blocks, reparameterize
from edgerep.reparam.blocks.mobileone import MobileOneBlock
from edgerep.zoo import create_model, list_models
from edgerep.zoo.layers import SEModule
from edgerep.zoo.mobileone import CFGS


@given(
    channels=block_channels(),
    stride=STRIDES,
    dilation=dilations(2),
    kernel=ODD_KERNELS,
    num_branches=st.integers(1, 4),
    se=st.booleans(),
    hw=spatial(5, 10),
)
def test_mobileone_fuses_exactly(channels, stride, dilation, kernel, num_branches, se, hw):
    cin, cout, groups = channels
    attn = SEModule(cout) if se else None
    block = MobileOneBlock(cin, cout, kernel, stride, dilation, groups, num_branches, attn=attn)
    assert len(block.conv_kxk) == num_branches
    assert (block.conv_scale is None) == (kernel == 1)
    assert (block.identity is not None) == (cin == cout and stride == 1)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=4), dict(num_branches=0)])
def test_unsupported_configurations_raise(kwargs):
    with pytest.raises(ValueError):
        MobileOneBlock(4, 4, **kwargs)


def test_block_deploy_form_is_one_conv_named_like_timm():
    block = MobileOneBlock(8, 8, 3, groups=8, num_branches=4, attn=SEModule(8)).eval()
    fused = reparameterize(block)
    assert {n for n, _ in fused.named_parameters()} == {
        "reparam_conv.weight", "reparam_conv.bias",
        "attn.fc1.weight", "attn.fc1.bias", "attn.fc2.weight", "attn.fc2.bias",
    }
    assert fused.reparam_conv.groups == 8 and fused.reparam_conv.padding == (1, 1)


# Parameter counts of timm 1.0.31's models (train form; deploy form for S0): they pin the architecture data.
TIMM_PARAMS = {
    "mobileone_s0": 5293272,
    "mobileone_s1": 4825192,
    "mobileone_s2": 7884648,
    "mobileone_s3": 10170600,
    "mobileone_s4": 14951248,
}
TIMM_S0_DEPLOY_PARAMS = 2078504


def test_zoo_variants_match_timm_sizes():
    assert list_models("mobileone") == sorted(TIMM_PARAMS)
    for name, n_params in TIMM_PARAMS.items():
        assert sum(p.numel() for p in meta_model(name).parameters()) == n_params, name
    assert create_model("mobileone_s0", num_classes=10).head.fc.out_features == 10


def timm_deploy_keys(train_keys):
    """timm's ``reparameterize_model`` keeps ``attn``, drops every branch and adds ``reparam_conv``."""
    branch = (".conv_kxk.", ".conv_scale.", ".identity.")
    keys = {k for k in train_keys if not any(b in k for b in branch)}
    for k in train_keys:
        if ".conv_kxk.0.conv.weight" in k:
            prefix = k.split(".conv_kxk.")[0]
            keys |= {f"{prefix}.reparam_conv.weight", f"{prefix}.reparam_conv.bias"}
    return keys


@pytest.fixture(scope="module")
def timm_s0():
    return run_timm_fixture("mobileone_s0", "timm_mobileone_s0.pt")


def test_timm_checkpoint_computes_timm_outputs(timm_s0):
    assert output_error(timm_s0.ckpt["output_train"], timm_s0.out_train).rel <= REL_TOL_FP32
    assert output_error(timm_s0.ckpt["output_deploy"], timm_s0.out_deploy).rel <= REL_TOL_FP32


def test_deploy_model_has_timm_deploy_layout(timm_s0):
    deploy = timm_s0.deploy
    assert count_blocks(deploy) == {}
    sd = deploy.state_dict()
    assert set(sd) == timm_deploy_keys(timm_s0.ckpt["state_dict"])
    assert "stages.0.0.reparam_conv.weight" in sd and "stem.reparam_conv.bias" in sd
    assert sum(p.numel() for p in deploy.parameters()) == TIMM_S0_DEPLOY_PARAMS


def test_deploy_graph_is_plain(timm_s0):
    gm = torch.fx.symbolic_trace(timm_s0.deploy)
    mods = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mods)
    n_blocks = 1 + 2 * sum(CFGS["mobileone_s0"].depths)  # stem + (dw, pw) pairs: one conv each
    assert sum(isinstance(m, torch.nn.Conv2d) for m in mods) == n_blocks == 43
