"""The generic re-parameterization pass on architectures it has never seen: models defined only here.

These run the FX front end (``graph="fx"``): the branch algebra is shared by both front ends, FX is fast enough
for hypothesis, and its graphs count in module terms. The ATen front end: tests/reparam/test_generic_aten.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import REL_TOL_FP64
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from edgerep.proof.metrics import count_nodes
from edgerep.proof.numerics import randomize_bn
from edgerep.reparam import generic
from edgerep.reparam.blocks.acb import ACBlock
from edgerep.reparam.blocks.cmb import CircularMaskBlock
from edgerep.reparam.blocks.dbb import DiverseBranchBlock
from edgerep.reparam.blocks.mobileone import MobileOneBlock
from edgerep.reparam.blocks.repghost import RepGhostModule
from edgerep.reparam.blocks.replk import ReparamLargeKernelConv
from edgerep.reparam.blocks.repvgg import RepVGGBlock
from edgerep.reparam.fuse import bn_scale_shift
from edgerep.reparam.generic import Form, NotReparameterizableError
from edgerep.reparam.generic.form import NotExact

generic_pass = functools.partial(generic.generic_pass, graph="fx")
reparameterize_generic = functools.partial(generic.reparameterize_generic, graph="fx")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


class SeqBranch(nn.Module):
    """1x1 -> BN -> pad with the BN's value for a zero input -> kxk -> BN (DBB's border trick, written out)."""

    def __init__(self, cin, cout, k, stride, dilation, groups):
        super().__init__()
        self.pad = dilation * (k // 2)
        self.conv1 = nn.Conv2d(cin, cin, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, cout, k, stride, 0, dilation, groups, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.bn1(self.conv1(x))
        _, shift = bn_scale_shift(self.bn1)
        v = shift.reshape(1, -1, 1, 1)
        return self.bn2(self.conv2(F.pad(y - v, [self.pad] * 4) + v))


class MultiBranch(nn.Module):
    """Random parallel branches from one input to one sum; every branch a linear, shift-invariant op chain."""

    def __init__(self, cin, cout, stride, dilation, groups, kernels, bn, identity, avg, seq, scale, zpad=False):
        super().__init__()
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for k in kernels:
            self.convs.append(nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=not bn))
            self.bns.append(nn.BatchNorm2d(cout) if bn else nn.Identity())
        self.identity = nn.BatchNorm2d(cin) if identity else None
        self.avg = nn.Sequential(nn.AvgPool2d(avg, stride, avg // 2), nn.BatchNorm2d(cin)) if avg else None
        self.seq = SeqBranch(cin, cout, max(kernels), stride, dilation, groups) if seq else None
        self.scale = nn.Parameter(torch.rand(1, cout, 1, 1) + 0.5) if scale else None
        k, p = max(kernels), dilation * (max(kernels) // 2)  # explicit zero padding, then a valid conv
        padded = nn.Sequential(nn.ZeroPad2d(p), nn.Conv2d(cin, cout, k, stride, 0, dilation, groups))
        self.zpad = padded if zpad else None

    def forward(self, x):
        y = self.bns[0](self.convs[0](x))
        if self.scale is not None:
            y = y * self.scale
        for conv, bn in zip(self.convs[1:], self.bns[1:]):
            y = y + bn(conv(x))
        if self.identity is not None:
            y = y + self.identity(x)
        if self.avg is not None:
            y = y + self.avg(x)
        if self.seq is not None:
            y = y + self.seq(x)
        if self.zpad is not None:
            y = y + self.zpad(x)
        return torch.relu(y)


@st.composite
def multi_branch(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    cin = groups * draw(st.integers(1, 3))
    cout = draw(st.sampled_from([cin, groups * draw(st.integers(1, 3))]))
    stride = draw(st.sampled_from([1, 2]))
    dilation = draw(st.sampled_from([1, 2]))
    kernels = draw(st.lists(st.sampled_from([1, 3, 5]), min_size=1, max_size=4))
    same = cin == cout
    avg = draw(st.sampled_from([0, 3])) if same and dilation == 1 else 0  # AvgPool2d has no dilation
    return dict(
        cin=cin, cout=cout, stride=stride, dilation=dilation, groups=groups, kernels=kernels,
        bn=draw(st.booleans()), identity=same and stride == 1 and draw(st.booleans()),
        avg=avg, seq=draw(st.booleans()), scale=draw(st.booleans()), zpad=draw(st.booleans()),
    ), draw(st.integers(5, 9))


@given(multi_branch())
def test_random_multi_branch_graph_becomes_one_exact_conv(case):
    cfg, size = case
    assume(len(cfg["kernels"]) + cfg["identity"] + bool(cfg["avg"]) + cfg["seq"] + cfg["zpad"] >= 2)
    torch.manual_seed(0)
    model = randomize_bn(MultiBranch(**cfg)).double().eval()
    x = torch.randn(2, cfg["cin"], size, size, dtype=torch.float64)
    gm, report = generic_pass(model, x, strict=True)
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= REL_TOL_FP64
    nodes = count_nodes(gm)
    assert nodes == {"Conv2d": 1, "relu": 1}, (cfg, dict(nodes))
    assert len(report.sets) == 1 and not report.skipped


def test_lopsided_padding_and_crops_merge_exactly():
    """ACNet-style crops (``x[..., 1 : w - 1]``) and F.pad with different sides, read for any input size."""

    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.square = nn.Conv2d(3, 4, 3, 1, 0)
            self.ver = nn.Conv2d(3, 4, (3, 1), 1, 0)
            self.hor = nn.Conv2d(3, 4, (1, 3), 1, 0)
            self.lop = nn.Conv2d(3, 4, 2, 1, 0)

        def forward(self, x):
            h, w = x.shape[-2:]
            y = self.square(x) + self.ver(x[..., 1 : w - 1]) + self.hor(x[..., 1 : h - 1, :])
            return y + self.lop(F.pad(x, [0, -1, 0, -1]))  # crop right/bottom, then a 2x2 conv

    model = Crop().double().eval()
    gm = reparameterize_generic(model, torch.zeros(1, 3, 8, 8, dtype=torch.float64), strict=True)
    for size in (6, 9):  # another size than the traced one: the crops were read symbolically
        x = torch.randn(2, 3, size, size + 1, dtype=torch.float64)
        with torch.no_grad():
            assert _rel(gm(x), model(x)) <= REL_TOL_FP64
    assert dict(count_nodes(gm)) == {"Conv2d": 1}


def test_conv_bn_chain_folds_and_bn_before_padded_conv_does_not():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),  # BN then zero padding: folding would be inexact
    )
    model = randomize_bn(model).double().eval()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    gm, report = generic_pass(model, x)
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= REL_TOL_FP64
    assert dict(count_nodes(gm)) == {"Conv2d": 2, "ReLU": 1, "BatchNorm2d": 1}
    assert len(report.chains) == 1 and not report.sets


class TwoBranches(nn.Module):
    def __init__(self, second: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.second = second

    def forward(self, x):
        return self.conv(x) + self.second(x)


@pytest.mark.parametrize(
    "second, names",
    [
        (nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), ["second_1", "ReLU"]),
        (nn.Conv2d(4, 4, 3, 1, 1, padding_mode="reflect"), ["second", "reflect"]),
        (nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False)), ["second_0", "count_include_pad"]),
        # 1x1 -> BN -> zero-padded 3x3 without DBB's border trick: the border would be off by the BN's shift
        (nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, 1, 1)), ["second_2", "bias"]),
    ],
)
def test_non_linear_or_inexact_branch_is_refused_by_name(second, names):
    model = randomize_bn(TwoBranches(second)).eval()
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(NotReparameterizableError) as exc:
        generic_pass(model, x, strict=True)
    for name in names:
        assert name in str(exc.value)
    gm, report = generic_pass(model, x)  # lenient: left as it is, reported, still the same function
    assert [r.node for r in report.skipped] == ["<model> (add, node add)"] and not report.sets
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= 1e-6


def test_mismatched_branch_geometry_is_refused():
    class Mismatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, 2, 1)  # reads pixels 2i-1 .. 2i+1
            self.b = nn.Conv2d(4, 4, 2, 2, 0)  # reads 2i .. 2i+1: same size on even inputs only

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(NotReparameterizableError, match="add.*different output sizes"):
        generic_pass(Mismatch().eval(), torch.randn(1, 4, 8, 8), strict=True)
    first = Form.of_identity(4, torch.float32)
    strided = first.conv(torch.randn(4, 4, 1, 1), None, (2, 2), (0, 0, 0, 0), (1, 1), 1)
    with pytest.raises(NotExact, match="different strides"):
        Form.add([first, strided])


def test_branch_output_used_elsewhere_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, 1, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            a = self.conv(x)
            return a + self.bn(x), torch.relu(a)

    with pytest.raises(NotReparameterizableError, match="conv is used by several nodes"):
        generic_pass(Shared().eval(), torch.randn(1, 4, 6, 6), strict=True)


def test_bn_in_training_mode_is_refused_and_model_in_training_mode_is_fixed():
    model = TwoBranches(nn.BatchNorm2d(4)).eval()
    model.second.train()
    with pytest.raises(NotReparameterizableError, match="training mode"):
        generic_pass(model, torch.randn(2, 4, 6, 6), strict=True)
    with pytest.warns(UserWarning, match="training mode"):
        gm = reparameterize_generic(TwoBranches(nn.BatchNorm2d(4)).train(), torch.randn(2, 4, 6, 6))
    assert dict(count_nodes(gm)) == {"Conv2d": 1}


def test_untraceable_submodule_is_kept_whole_and_named():
    class Dynamic(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # data-dependent: torch.fx cannot trace it

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.branches = TwoBranches(nn.Conv2d(4, 4, 1))
            self.dyn = Dynamic()

        def forward(self, x):
            return self.dyn(self.branches(x))

    model = Model().eval()
    x = torch.randn(1, 4, 6, 6)
    gm, report = generic_pass(model, x)
    assert list(report.opaque_modules) == ["dyn"] and len(report.sets) == 1
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= 1e-6
    with pytest.raises(NotReparameterizableError, match="dyn"):
        generic_pass(model, x, strict=True)


def test_result_exports_and_holds_no_dead_parameters():
    model = randomize_bn(MultiBranch(4, 4, 1, 1, 2, [3, 1], True, True, 3, True, True)).eval()
    gm = reparameterize_generic(model, torch.zeros(1, 4, 8, 8))
    assert sum(p.numel() for p in gm.parameters()) == 4 * 2 * 3 * 3 + 4
    x = torch.randn(1, 4, 8, 8)
    ep = torch.export.export(gm, (x,))
    with torch.no_grad():
        assert _rel(ep.module()(x), model(x)) <= 1e-5
    # idempotent: a second pass finds nothing left to do
    again, report = generic_pass(gm, x)
    assert not report.sets and not report.chains and dict(count_nodes(again)) == dict(count_nodes(gm))


BLOCKS = {  # edgerep's own blocks, converted by the generic pass as if it had never seen them
    "acb_crop": (lambda: ACBlock(4, 6, 3, 1, 0), {"Conv2d": 1}),
    "acb_s2_g2": (lambda: ACBlock(4, 6, 3, 2, 1, groups=2), {"Conv2d": 1}),
    "dbb": (lambda: DiverseBranchBlock(4, 6, 3, 1), {"Conv2d": 1}),
    "dbb_s2_g2": (lambda: DiverseBranchBlock(4, 6, 3, 2, groups=2), {"Conv2d": 1}),
    "dbb_depthwise": (lambda: DiverseBranchBlock(4, 4, 3, 1, groups=4), {"Conv2d": 1}),
    "dbb_k5_wide": (lambda: DiverseBranchBlock(4, 4, 5, 1, internal_channels=8), {"Conv2d": 1}),
    "replk": (lambda: ReparamLargeKernelConv(4, 4, 7, 3), {"Conv2d": 1}),
    "cmb": (lambda: CircularMaskBlock(4, 6, 5), {"Conv2d": 1}),
    "repvgg": (lambda: RepVGGBlock(4, 4), {"Conv2d": 1, "ReLU": 1}),
    "mobileone_dw": (lambda: MobileOneBlock(4, 4, 3, num_branches=3, groups=4), {"Conv2d": 1, "ReLU": 1}),
    # the generic pass also folds the primary conv's BN, which the block-aware (timm) deploy layout keeps
    "repghost": (lambda: RepGhostModule(4, 6, relu=False), {"Conv2d": 2}),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_edgerep_blocks_convert_like_their_own_fuse(name):
    make, nodes = BLOCKS[name]
    torch.manual_seed(0)
    block = randomize_bn(make()).double().eval()
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    gm = reparameterize_generic(block, x[:1], strict=True)
    with torch.no_grad():
        ref = block(x)
        assert _rel(gm(x), ref) <= REL_TOL_FP64
        assert _rel(gm(x), block.fuse()(x)) <= REL_TOL_FP64
    assert dict(count_nodes(gm)) == nodes


def test_dilated_dbb_untraceable_pool_is_kept_and_named():
    """DBB's dilated average pool reads ``x.shape[1]`` to build its kernel: FX cannot trace it, so it stays."""
    block = randomize_bn(DiverseBranchBlock(4, 4, 3, 1, dilation=2)).double().eval()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    gm, report = generic_pass(block, x[:1])
    assert list(report.opaque_modules) == ["dbb_avg.avg"]
    assert "DilatedAvgPool2d" in str(report.skipped[0])
    with torch.no_grad():
        assert _rel(gm(x), block(x)) <= REL_TOL_FP64


def test_sum_written_as_builtin_sum_torch_add_and_inplace_add():
    class Sums(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(4, 4, k, 1, k // 2) for k in (1, 3, 5))
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = sum(conv(x) for conv in self.convs)
            y += self.bn(x)
            return torch.add(y, x, alpha=1) - 0.5 * x

    model = randomize_bn(Sums()).double().eval()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    gm = reparameterize_generic(model, x[:1], strict=True)
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= REL_TOL_FP64
    assert dict(count_nodes(gm)) == {"Conv2d": 1}
