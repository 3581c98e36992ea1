"""RepGhost: the module fuses exactly; the zoo models are timm's, in train and deploy form."""

import warnings

import pytest
import torch
from conftest import REL_TOL_FP32, STRIDES, assert_fuses_exactly, meta_model, run_timm_fixture, spatial
from hypothesis import given
from hypothesis import strategies as st

from edgerep.proof.numerics import output_error
from edgerep.reparam import count_blocks, reparameterize
from edgerep.reparam.blocks.repghost import RepGhostDeploy, RepGhostModule
from edgerep.zoo import create_model, list_models
from edgerep.zoo.repghostnet import RepGhostBottleneck


@given(
    cin=st.integers(1, 8),
    cout=st.integers(1, 8),
    kernel=st.sampled_from([1, 3]),
    dw_size=st.sampled_from([3, 5]),
    stride=STRIDES,
    relu=st.booleans(),
    hw=spatial(5, 10),
)
def test_repghost_module_fuses_exactly(cin, cout, kernel, dw_size, stride, relu, hw):
    block = RepGhostModule(cin, cout, kernel, dw_size, stride, relu)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


@given(
    cin=st.sampled_from([4, 8]),
    mid=st.sampled_from([8, 12]),
    cout=st.sampled_from([4, 8]),
    dw_kernel=st.sampled_from([3, 5]),
    stride=STRIDES,
    se=st.sampled_from([0.0, 0.25]),
)
def test_repghost_bottleneck_fuses_exactly(cin, mid, cout, dw_kernel, stride, se):
    block = RepGhostBottleneck(cin, mid, cout, dw_kernel, stride, se_ratio=se)
    assert (block.shortcut is None) == (cin == cout and stride == 1)
    assert_fuses_exactly(block, torch.randn(2, cin, 9, 8))
    assert count_blocks(block) == {"RepGhostModule": 2}


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(dw_size=4)])
def test_unsupported_configurations_raise(kwargs):
    with pytest.raises(ValueError, match="odd"):
        RepGhostModule(4, 4, **kwargs)


def test_deploy_form_keeps_primary_and_has_one_cheap_conv():
    fused = reparameterize(RepGhostModule(4, 6, relu=False).eval())
    assert isinstance(fused, RepGhostDeploy) and count_blocks(fused) == {}
    assert isinstance(fused.cheap_operation, torch.nn.Conv2d) and fused.cheap_operation.groups == 6
    assert {n for n, _ in fused.named_parameters()} == {
        "primary_conv.0.weight", "primary_conv.1.weight", "primary_conv.1.bias",
        "cheap_operation.weight", "cheap_operation.bias",
    }
    twice = reparameterize(fused)  # idempotent: nothing left to fuse
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(fused(x), twice(x))


# Parameter counts of timm 1.0.31's models (train form): they pin the width rounding and the table.
TIMM_PARAMS = {
    "repghostnet_050": 2313968,
    "repghostnet_058": 2546388,
    "repghostnet_080": 3278968,
    "repghostnet_100": 4073604,
    "repghostnet_111": 4539984,
    "repghostnet_130": 5478612,
    "repghostnet_150": 6575336,
    "repghostnet_200": 9796124,
}
TIMM_050_DEPLOY_PARAMS = 2306528


def test_zoo_variants_match_timm_sizes():
    assert list_models("repghostnet") == sorted(TIMM_PARAMS)
    for name, n_params in TIMM_PARAMS.items():
        assert sum(p.numel() for p in meta_model(name).parameters()) == n_params, name
    assert create_model("repghostnet_050", num_classes=7).classifier.out_features == 7


def timm_deploy_keys(train_keys):
    """timm's ``switch_to_deploy``: ``fusion_bn`` goes, ``cheap_operation`` becomes one conv with bias."""
    keys = {k for k in train_keys if ".fusion_bn." not in k and ".cheap_operation." not in k}
    for k in train_keys:
        if k.endswith(".cheap_operation.0.weight"):
            prefix = k[: -len("0.weight")]
            keys |= {prefix + "weight", prefix + "bias"}
    return keys


@pytest.fixture(scope="module")
def timm_050():
    return run_timm_fixture("repghostnet_050", "timm_repghostnet_050.pt")


def test_timm_checkpoint_computes_timm_outputs(timm_050):
    assert output_error(timm_050.ckpt["output_train"], timm_050.out_train).rel <= REL_TOL_FP32
    assert output_error(timm_050.ckpt["output_deploy"], timm_050.out_deploy).rel <= REL_TOL_FP32


def test_deploy_model_has_timm_deploy_layout(timm_050):
    deploy = timm_050.deploy
    assert count_blocks(deploy) == {}
    sd = deploy.state_dict()
    assert set(sd) == timm_deploy_keys(timm_050.ckpt["state_dict"])
    assert "blocks.0.0.ghost1.cheap_operation.bias" in sd
    assert sum(p.numel() for p in deploy.parameters()) == TIMM_050_DEPLOY_PARAMS


def _call_modules(gm: torch.fx.GraphModule) -> list[torch.nn.Module]:
    return [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"]


def test_deploy_graph_is_plain(timm_050):
    """timm's deploy layout keeps the BNs that follow a single conv (primary, dw, shortcut, stem, last
    1x1); every one of them folds with a plain conv-BN fold, which leaves no BN and the train conv count."""
    deploy, n_convs = timm_050.deploy, timm_050.train_convs
    mods = _call_modules(torch.fx.symbolic_trace(deploy))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in mods) == n_convs == 95
    with warnings.catch_warnings():  # its import trips torch.jit deprecation warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.fx.experimental.optimization import fuse as fx_fuse_conv_bn
    folded = fx_fuse_conv_bn(deploy)
    mods = _call_modules(folded)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mods)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in mods) == n_convs
    with torch.no_grad():
        assert output_error(timm_050.out_deploy, folded(timm_050.ckpt["input"])).rel <= REL_TOL_FP32
