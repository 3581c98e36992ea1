"""ResRep (pruning by compactor) and RepMLP (conv branches folded into a patch FC): deploy == train."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import REL_TOL_FP64, STRIDES, assert_fuses_exactly, dilations, spatial
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import count_blocks, reparameterize
from edgerep.reparam.blocks.base import ConvBN, FusedConv, ReparamBlock
from edgerep.reparam.blocks.repmlp import PatchFC, RepMLPBlock
from edgerep.reparam.blocks.resrep import ResRepPair


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- ResRep ----------------------------------------------------------------------------------------


def trained_compactor(pair: ResRepPair, zero_rows: list[int], seed: int = 0, small: float = 0.0) -> None:
    """What training leaves: a compactor away from the identity, with some rows (near) zero."""
    c = pair.compactor.weight.shape[0]
    with torch.no_grad():
        w = torch.eye(c) + 0.3 * torch.randn(c, c, generator=gen(seed))
        w[zero_rows] *= small
        pair.compactor.weight.copy_(w.reshape(c, c, 1, 1))


def make_pair(cin, mid, cout, k=3, stride=1, padding=1, dilation=1, k_next=3, consumer="conv", act=None, bias=False):
    conv = nn.Conv2d(cin, mid, k, stride, padding, dilation, bias=bias)
    if consumer == "conv":
        nxt = nn.Conv2d(mid, cout, k_next, padding=k_next // 2)
    else:
        nxt = ConvBN(mid, cout, k_next, padding=k_next // 2)
    return ResRepPair(conv, nn.BatchNorm2d(mid), nxt, act=act)


@given(
    cin=st.integers(1, 4), mid=st.integers(1, 6), cout=st.integers(1, 4), k=st.sampled_from([1, 2, 3]),
    stride=STRIDES, padding=st.integers(0, 2), dilation=dilations(2),
    k_next=st.sampled_from([1, 3]), consumer=st.sampled_from(["conv", "convbn"]), bias=st.booleans(),
    act=st.sampled_from([None, "identity", "pool"]), data=st.data(), hw=spatial(7, 10),
)
def test_resrep_pruned_deploy_equals_train(
    cin, mid, cout, k, stride, padding, dilation, k_next, consumer, bias, act, data, hw
):
    act_mod = {None: None, "identity": nn.Identity(), "pool": nn.Sequential(nn.ReLU(), nn.MaxPool2d(2, 1))}[act]
    pair = make_pair(cin, mid, cout, k, stride, padding, dilation, k_next, consumer, act_mod, bias)
    zero_rows = data.draw(st.lists(st.integers(0, mid - 1), unique=True, max_size=mid), label="zero_rows")
    trained_compactor(pair, zero_rows)
    assert pair.removed_channels() == min(len(zero_rows), mid - 1)  # one channel always survives
    assert_fuses_exactly(pair, torch.randn(2, cin, *hw, generator=gen(1)))
    deploy = pair.fuse()
    kept = mid - pair.removed_channels()
    assert deploy.conv.reparam_conv.out_channels == kept
    first_of_consumer = deploy.consumer if consumer == "conv" else deploy.consumer.conv
    assert first_of_consumer.in_channels == first_of_consumer.weight.shape[1] == kept


def test_resrep_get_kernel_bias_is_conv_bn_compactor_before_pruning():
    pair = make_pair(3, 5, 2, stride=2)
    trained_compactor(pair, [1, 3])
    randomize_bn(pair, gen(2))
    pair = pair.double().eval()
    x = torch.randn(2, 3, 9, 9, generator=gen(3), dtype=torch.float64)
    kb = pair.get_kernel_bias()
    assert kb.kernel.shape == (5, 3, 3, 3) and kb.kernel.requires_grad
    with torch.no_grad():
        ref = pair.compactor(pair.bn(pair.conv(x)))
        out = F.conv2d(x, kb.kernel, kb.bias, stride=2, padding=1)
    assert output_error(ref, out).rel <= REL_TOL_FP64
    assert torch.equal(kb.kernel[[1, 3]], torch.zeros(2, 3, 3, 3, dtype=torch.float64))


def test_resrep_compactor_starts_as_identity():
    pair = make_pair(3, 4, 2).eval()
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(pair(x), pair.consumer(pair.act(pair.bn(pair.conv(x)))), rtol=0, atol=0)
    torch.testing.assert_close(pair.compactor_norms(), torch.ones(4))


def test_resrep_threshold_prunes_near_zero_rows_and_reports_it(caplog):
    pair = make_pair(3, 8, 4)
    trained_compactor(pair, [0, 2, 5], small=1e-7)
    randomize_bn(pair, gen(4))
    pair.eval()
    assert pair.removed_channels() == 0, "threshold 0 keeps rows that are not exactly zero"
    pair.threshold = 1e-4
    assert pair.removed_channels() == 3 and pair.kept_channels().tolist() == [1, 3, 4, 6, 7]
    x = torch.randn(2, 3, 8, 8, generator=gen(5))
    with caplog.at_level(logging.INFO, logger="edgerep.reparam.blocks.resrep"), torch.no_grad():
        deploy = reparameterize(pair)
        err = output_error(pair(x), deploy(x))
    assert "removed 3 of 8 channels" in caplog.text
    assert deploy.conv.reparam_conv.out_channels == 5
    assert err.rel < 1e-5, "near-zero rows carry near-zero signal"
    assert pair.fuse(threshold=0.0).conv.reparam_conv.out_channels == 8, "fuse(threshold) overrides the attribute"


def test_resrep_all_rows_zero_keeps_one_channel():
    pair = make_pair(2, 4, 3)
    trained_compactor(pair, [0, 1, 2, 3])
    assert pair.kept_channels().numel() == 1
    assert_fuses_exactly(pair, torch.randn(1, 2, 6, 6))


def test_resrep_nested_chain_prunes_every_layer_through_the_walker():
    inner = ResRepPair(nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.Conv2d(5, 4, 1))
    outer = ResRepPair(nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6), inner)
    trained_compactor(outer, [0, 4], seed=1)
    trained_compactor(inner, [2], seed=2)
    model = nn.Sequential(outer, nn.ReLU())
    x = torch.randn(2, 3, 7, 7, generator=gen(6))
    for candidate in (model, outer):  # bottom-up walker, and a direct fuse() that must fuse the inner pair
        assert_fuses_exactly(candidate, x)
    deploy = reparameterize(model.eval())
    assert count_blocks(deploy) == {} and not any(isinstance(m, ReparamBlock) for m in deploy.modules())
    shapes = {n: tuple(p.shape) for n, p in deploy.named_parameters()}
    assert shapes == {
        "0.conv.reparam_conv.weight": (4, 3, 1, 1),
        "0.conv.reparam_conv.bias": (4,),
        "0.consumer.conv.reparam_conv.weight": (4, 4, 3, 3),
        "0.consumer.conv.reparam_conv.bias": (4,),
        "0.consumer.consumer.weight": (4, 4, 1, 1),
        "0.consumer.consumer.bias": (4,),
    }
    torch.testing.assert_close(reparameterize(deploy)(x), deploy(x), rtol=0, atol=0)


def test_resrep_refuses_what_it_cannot_prune():
    bn = nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="groups=1 for the pruned conv"):
        ResRepPair(nn.Conv2d(4, 4, 3, groups=2), bn, nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match="BatchNorm has 4 channels"):
        ResRepPair(nn.Conv2d(2, 6, 3), bn, nn.Conv2d(6, 2, 1))
    with pytest.raises(ValueError, match="reads 4 with groups=4"):
        ResRepPair(nn.Conv2d(2, 4, 3), bn, nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match="reads 5 with groups=1"):
        ResRepPair(nn.Conv2d(2, 4, 3), bn, ConvBN(5, 2, 1))
    with pytest.raises(ValueError, match="cannot prune the input of a Linear"):
        ResRepPair(nn.Conv2d(2, 4, 3), bn, nn.Linear(4, 2))
    with pytest.raises(ValueError, match="map 0 to 0"):
        ResRepPair(nn.Conv2d(2, 4, 3), bn, nn.Conv2d(4, 2, 1), act=nn.Sigmoid())
    with pytest.raises(ValueError, match="threshold"):
        ResRepPair(nn.Conv2d(2, 4, 3), bn, nn.Conv2d(4, 2, 1), threshold=-1.0)


# --- RepMLP ----------------------------------------------------------------------------------------


@given(
    sharesets=st.sampled_from([1, 2, 4]), sets=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
    parts=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    kernel_sizes=st.lists(st.sampled_from([1, 3, 5]), unique=True, max_size=3),
    gp=st.sampled_from([None, 1, 2]),
)
def test_repmlp_fuses_exactly(sharesets, sets, h, w, parts, kernel_sizes, gp):
    channels = sharesets * sets
    block = RepMLPBlock(channels, h, w, kernel_sizes, sharesets, gp and min(gp, channels))
    x = torch.randn(2, channels, h * parts[0], w * parts[1], generator=gen(7))
    assert_fuses_exactly(block, x)
    kb = block.get_kernel_bias()
    n = sharesets * h * w
    assert kb.kernel.shape == (n, h * w, 1, 1) and kb.bias.shape == (n,)


def test_repmlp_local_branch_is_a_conv_on_each_patch():
    """One 3x3 branch and a zero FC: the block is that conv applied to each patch alone (zero borders)."""
    block = RepMLPBlock(4, 3, 2, kernel_sizes=(3,), sharesets=2, gp_reduction=None).double()
    randomize_bn(block, gen(8))
    block.eval()
    with torch.no_grad():
        block.fc3.weight.zero_()
        block.fc3_bn.bias.zero_()
        block.fc3_bn.running_mean.zero_()
    x = torch.randn(1, 4, 6, 4, generator=gen(9), dtype=torch.float64)
    branch = block.repconv3
    kernel = branch.conv.weight.repeat(2, 1, 1, 1)  # channel c uses share-set c mod 2
    bn_scale = (branch.bn.weight / (branch.bn.running_var + branch.bn.eps).sqrt()).repeat(2)
    bn_shift = branch.bn.bias.repeat(2) - branch.bn.running_mean.repeat(2) * bn_scale
    ref = torch.zeros_like(x)
    for i in range(0, 6, 3):
        for j in range(0, 4, 2):
            patch = F.conv2d(x[..., i : i + 3, j : j + 2], kernel, padding=1, groups=4)
            ref[..., i : i + 3, j : j + 2] = patch * bn_scale.reshape(1, -1, 1, 1) + bn_shift.reshape(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(block.fuse()(x), ref, rtol=1e-12, atol=1e-12)


def test_repmlp_deploy_has_one_fc_and_no_branches():
    block = RepMLPBlock(8, 2, 2, kernel_sizes=(1, 3, 5), sharesets=4).eval()
    deploy = reparameterize(block)
    assert isinstance(deploy, PatchFC) and not isinstance(deploy, ReparamBlock)
    assert not any(isinstance(m, (ConvBN, nn.BatchNorm2d, FusedConv)) for m in deploy.modules())
    names = {n for n, _ in deploy.named_parameters()}
    assert names == {"fc3.weight", "fc3.bias", "gp.fc1.weight", "gp.fc1.bias", "gp.fc2.weight", "gp.fc2.bias"}
    assert deploy.fc3.groups == 4 and deploy.fc3.in_channels == deploy.fc3.out_channels == 16
    x = torch.randn(1, 8, 4, 6)
    torch.testing.assert_close(reparameterize(deploy)(x), deploy(x), rtol=0, atol=0)


def test_repmlp_state_dict_uses_the_original_names():
    keys = set(RepMLPBlock(4, 2, 2, kernel_sizes=(1, 3), sharesets=2, gp_reduction=2).state_dict())
    assert {"fc3.weight", "fc3_bn.running_var", "repconv1.conv.weight", "repconv3.bn.weight", "gp.fc1.weight"} <= keys


def test_repmlp_refuses_bad_configurations():
    with pytest.raises(ValueError, match="multiple of sharesets"):
        RepMLPBlock(6, 2, 2, sharesets=4)
    with pytest.raises(ValueError, match="odd"):
        RepMLPBlock(4, 2, 2, kernel_sizes=(2,))
    with pytest.raises(ValueError, match="distinct"):
        RepMLPBlock(4, 2, 2, kernel_sizes=(3, 3))
    with pytest.raises(ValueError, match="patch size"):
        RepMLPBlock(4, 0, 2)
    with pytest.raises(ValueError, match="gp_reduction"):
        RepMLPBlock(4, 2, 2, gp_reduction=8)
    block = RepMLPBlock(4, 3, 3).eval()
    for module in (block, block.fuse()):
        with pytest.raises(ValueError, match="whole number of 3x3 patches"):
            module(torch.randn(1, 4, 6, 7))
