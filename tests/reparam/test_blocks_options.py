"""The originals' options: ACB padding_mode, RepLK without small kernel, RepGhost repid variants, ResRep's
``<`` threshold, RepMLP's original partition order. Each is checked against a small re-statement of the
original's forward (written from its published structure: module names, padding lists, reshapes) with the
same weights, and the fused form against the train form, in float64 (relative error <= 1e-10).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import REL_TOL_FP64
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import reparameterize
from edgerep.reparam.blocks.acb import ACBlock
from edgerep.reparam.blocks.repghost import RepGhostModule
from edgerep.reparam.blocks.replk import ReparamLargeKernelConv
from edgerep.reparam.blocks.repmlp import RepMLPBlock
from edgerep.reparam.blocks.resrep import ResRepPair


def _rel(a, b) -> float:
    return output_error(b, a).rel


# ---- ACB: padding_mode as ACNet's acb.py applies it (every branch conv pads with the same mode)
class OriginalACB(nn.Module):
    def __init__(self, cin, cout, k, stride, padding, groups, padding_mode):
        super().__init__()
        common = dict(stride=stride, groups=groups, bias=False, padding_mode=padding_mode)
        self.square_conv = nn.Conv2d(cin, cout, k, padding=padding, **common)
        if padding - k // 2 >= 0:
            self.crop, hor, ver = 0, [padding - k // 2, padding], [padding, padding - k // 2]
        else:
            self.crop, hor, ver = k // 2 - padding, [0, padding], [padding, 0]
        self.ver_conv = nn.Conv2d(cin, cout, (k, 1), padding=ver, **common)
        self.hor_conv = nn.Conv2d(cin, cout, (1, k), padding=hor, **common)
        self.square_bn, self.ver_bn, self.hor_bn = (nn.BatchNorm2d(cout) for _ in range(3))

    def forward(self, x):
        c = self.crop
        ver_in = x[:, :, :, c:-c] if c else x
        hor_in = x[:, :, c:-c, :] if c else x
        return (self.square_bn(self.square_conv(x)) + self.ver_bn(self.ver_conv(ver_in))
                + self.hor_bn(self.hor_conv(hor_in)))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["zeros", "reflect", "replicate", "circular"]), st.sampled_from([3, 5]),
       st.sampled_from([-1, 0, 1]), st.sampled_from([1, 2]), st.sampled_from([1, 2]))
def test_acb_padding_mode_matches_the_original_and_fuses(mode, k, dpad, stride, groups):
    padding = k // 2 + dpad
    torch.manual_seed(0)
    block = randomize_bn(ACBlock(4, 4, k, stride, padding, groups=groups, padding_mode=mode)).double().eval()
    original = OriginalACB(4, 4, k, stride, padding, groups, mode).double().eval()
    original.load_state_dict(block.state_dict())
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        ref = original(x)
        assert _rel(block(x), ref) <= REL_TOL_FP64
        fused = reparameterize(block)
        assert _rel(fused(x), ref) <= REL_TOL_FP64
    conv = next(m for m in fused.modules() if isinstance(m, nn.Conv2d))
    assert conv.padding_mode == mode


def test_acb_refuses_an_unknown_padding_mode():
    with pytest.raises(ValueError, match="padding_mode"):
        ACBlock(2, 2, 3, padding_mode="mirror")


# ---- RepLK: small_kernel=None (RepLKNet's replknet.py creates no small_conv then)
def test_replk_without_small_kernel_has_no_small_conv_and_fuses():
    torch.manual_seed(0)
    block = randomize_bn(ReparamLargeKernelConv(4, 4, 7, small_kernel=None)).double().eval()
    assert not any(k.startswith("small_conv") for k in block.state_dict())
    x = torch.randn(2, 4, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        ref = block.lkb_origin.bn(block.lkb_origin.conv(x))
        assert _rel(block(x), ref) == 0.0
        assert _rel(reparameterize(block)(x), ref) <= REL_TOL_FP64


# ---- RepGhost: reparam_bn / reparam_identity as the original RepGhostModule orders its fusion branches
@pytest.mark.parametrize("reparam_bn, reparam_identity", [(True, False), (True, True), (False, True), (False, False)])
def test_repghost_repid_variants_match_the_original_and_fuse(reparam_bn, reparam_identity):
    torch.manual_seed(0)
    block = randomize_bn(RepGhostModule(3, 6, 1, 3, reparam_bn=reparam_bn, reparam_identity=reparam_identity))
    block = block.double().eval()
    keys = set(block.state_dict())
    assert any(k.startswith("fusion_bn.0.") for k in keys) == reparam_bn
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        x1 = block.primary_conv(x)
        ref = block.cheap_operation(x1)
        if reparam_bn:
            ref = ref + block.fusion_bn[0](x1)
        if reparam_identity:
            ref = ref + x1
        ref = block.relu(ref)
        assert _rel(block(x), ref) <= REL_TOL_FP64
        assert _rel(reparameterize(block)(x), ref) <= REL_TOL_FP64


# ---- ResRep: the original prunes rows with norm < threshold
def _pair(rule: str, threshold: float) -> ResRepPair:
    torch.manual_seed(0)
    pair = ResRepPair(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1),
                      threshold=threshold, threshold_rule=rule)
    with torch.no_grad():
        pair.compactor.weight[1] = 0.0  # an exactly zero row
        pair.compactor.weight[2] *= 0.5  # norm 0.5 exactly
    return pair


@pytest.mark.parametrize("rule, threshold, removed", [("<=", 0.0, 1), ("<", 0.0, 0), ("<=", 0.5, 2), ("<", 0.5, 1)])
def test_resrep_threshold_rules(rule, threshold, removed):
    pair = _pair(rule, threshold)
    assert pair.removed_channels() == removed


def test_resrep_refuses_an_unknown_threshold_rule():
    with pytest.raises(ValueError, match="threshold_rule"):
        _pair("<<", 0.0)


# ---- RepMLP: the original's partition / partition_affine order
class OriginalRepMLP(nn.Module):
    """RepMLPNet's RepMLPBlock forward, as its code reshapes (with the same module names)."""

    def __init__(self, block: RepMLPBlock):
        super().__init__()
        self.C, self.S, self.h, self.w = block.channels, block.sharesets, block.h, block.w
        self.fc3, self.fc3_bn, self.gp, self.ks = block.fc3, block.fc3_bn, block.gp, block.kernel_sizes
        for k in self.ks:
            self.add_module(f"repconv{k}", getattr(block, f"repconv{k}"))

    def forward(self, x):
        hp, wp = x.shape[2] // self.h, x.shape[3] // self.w
        parts = x.reshape(-1, self.C, hp, self.h, wp, self.w).permute(0, 2, 4, 1, 3, 5)
        out = self.fc3(parts.reshape(-1, self.S * self.h * self.w, 1, 1)).reshape(-1, self.S, self.h, self.w)
        out = self.fc3_bn(out).reshape(-1, hp, wp, self.S, self.h, self.w)
        conv_in = parts.reshape(-1, self.S, self.h, self.w)
        conv = sum(getattr(self, f"repconv{k}")(conv_in) for k in self.ks)
        out = out + conv.reshape(-1, hp, wp, self.S, self.h, self.w)
        out = out.permute(0, 3, 1, 4, 2, 5).reshape(*x.shape)
        return out * self.gp(x)


@pytest.mark.parametrize("size", [(4, 4), (8, 12)])
@pytest.mark.parametrize("sharesets", [1, 2])
def test_repmlp_original_layout_reproduces_the_original_code(size, sharesets):
    torch.manual_seed(0)
    block = randomize_bn(RepMLPBlock(8, 4, 4, (1, 3), sharesets, layout="original")).double().eval()
    original = OriginalRepMLP(block)
    paper = RepMLPBlock(8, 4, 4, (1, 3), sharesets).double().eval()
    paper.load_state_dict(block.state_dict())
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        ref = original(x)
        assert _rel(block(x), ref) <= REL_TOL_FP64
        assert _rel(reparameterize(block)(x), ref) <= REL_TOL_FP64
        differs = _rel(paper(x), ref)
    if size == (4, 4):  # one patch per image: both orders are the same
        assert differs <= REL_TOL_FP64
    else:  # several patches and channel groups: the original mixes them, edgerep keeps the paper's order
        assert differs > 1e-2


def test_repmlp_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match="layout"):
        RepMLPBlock(4, 2, 2, layout="timm")


# ---- DBB: the original's nonlinear after the branch sum
@pytest.mark.parametrize("nonlinear", [None, nn.Identity(), nn.ReLU()])
def test_dbb_nonlinear_is_kept_after_the_fused_conv(nonlinear):
    from edgerep.reparam.blocks.dbb import DiverseBranchBlock

    torch.manual_seed(0)
    block = randomize_bn(DiverseBranchBlock(4, 6, 3, nonlinear=nonlinear)).double().eval()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        y = block.dbb_origin(x) + block.dbb_avg(x) + block.dbb_1x1_kxk(x) + block.dbb_1x1(x)
        ref = F.relu(y) if isinstance(nonlinear, nn.ReLU) else y
        assert _rel(block(x), ref) <= REL_TOL_FP64
        fused = reparameterize(block)
        assert _rel(fused(x), ref) <= REL_TOL_FP64
    assert isinstance(fused, nn.Conv2d) == (not isinstance(nonlinear, nn.ReLU))
