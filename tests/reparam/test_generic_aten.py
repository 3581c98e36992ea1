"""The generic pass's ATen front end (torch.export) on models written the ways other codebases write them.

Every model: outputs match the source (fp32 rel <= 1e-5, fp64 <= 1e-10), it runs no more convolutions than
the source, and exactly as many as its block-aware (timm ``reparameterize``-style) deploy form
(``deploy_convs``, counted by hand in tests/style_models.py). Counts are of convolutions *executed*
(``executed_convs``), so module reuse counts per call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ILL_CONDITIONED_FP32, REL_TOL_FP32, REL_TOL_FP64
from hypothesis import given, settings
from hypothesis import strategies as st
from style_models import InceptionStyle, StyleZoo, TimmRepMixer, TimmStyleNet, TrainingBN
from torch import nn

from edgerep.proof.numerics import randomize_bn
from edgerep.reparam import reparameterize
from edgerep.reparam.generic import generic_pass
from edgerep.reparam.generic.count import executed_convs
from edgerep.zoo import get_spec, list_models


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _check(model: nn.Module, x: torch.Tensor) -> tuple[int, object]:
    """fp32 and fp64 errors, conv counts; returns the generic form's executed convs and the report."""
    model = randomize_bn(model).eval()
    gm, report = generic_pass(model, x[:1])
    assert report.frontend == "aten", report.frontend
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= REL_TOL_FP32
        m64, x64 = model.double(), x.double()
        assert _rel(generic_pass(m64, x64[:1])[0](x64), m64(x64)) <= REL_TOL_FP64
        model.float()
    after, before = executed_convs(gm, x), executed_convs(model, x)
    assert after <= before and report.convs[1] <= report.convs[0]
    return after, report


@pytest.mark.parametrize("kind", ["repvgg", "mobileone"])
def test_timm_style_blocks_fuse_like_timm_reparameterize(kind):
    torch.manual_seed(0)
    model = TimmStyleNet(kind)
    after, report = _check(model, torch.randn(2, 3, 32, 32))
    assert after == model.deploy_convs, report
    assert not report.skipped, report.skipped


def test_fastvit_style_repmixer_fuses_like_timm():
    """timm's reparameterize: RepMixer -> one 3x3 depthwise conv, RepCPE -> one 7x7; the zero padding between
    them makes a 3x3 followed by a 7x7 not one conv, so two per block."""
    torch.manual_seed(0)
    after, report = _check(nn.Sequential(TimmRepMixer(8), nn.GELU(), TimmRepMixer(8)), torch.randn(2, 8, 12, 12))
    assert after == 4 and not report.skipped, report


def test_torchvision_mmcv_reuse_concat_styles_fuse():
    torch.manual_seed(0)
    model = StyleZoo()
    after, report = _check(model, torch.randn(2, 3, 24, 24))
    assert after == model.deploy_convs, report
    assert not report.skipped, report.skipped


def test_reflect_padding_branch_is_refused_by_module_and_op():
    torch.manual_seed(0)
    model = StyleZoo(reflect=True)
    after, report = _check(model, torch.randn(2, 3, 24, 24))
    assert after == model.deploy_convs
    (refusal,) = report.skipped
    assert refusal.node.startswith("mm (aten.add") and "reflect" in refusal.reason, refusal


def test_batch_statistics_bn_is_refused_by_name_and_left():
    torch.manual_seed(0)
    model = TrainingBN(4).eval()
    x = torch.randn(2, 4, 12, 12)
    gm, report = generic_pass(model, x[:1])
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= REL_TOL_FP32
    assert executed_convs(gm, x) == 2
    assert any("aten.batch_norm" in r.node and "training=True" in r.reason for r in report.skipped), report.skipped


def test_a_concat_merge_that_would_grow_the_weights_is_skipped_and_reported():
    torch.manual_seed(0)
    model = InceptionStyle(4, kernels=(1, 3, 5))
    after, report = _check(model, torch.randn(2, 4, 10, 10))
    assert after == model.deploy_convs
    (refusal,) = report.skipped
    assert refusal.node.startswith("<model> (aten.cat") and "more MACs" in refusal.reason
    gm, _ = generic_pass(randomize_bn(model).eval(), torch.randn(1, 4, 10, 10))
    assert not [n for n in gm.graph.nodes if "batch_norm" in str(n.target)], "each branch's BN is still folded"


class _BNPlusInput(nn.Module):
    """relu -> x + BN(x): merging it would turn two elementwise ops into a new 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return y + self.bn(y)


def test_a_merge_that_would_add_a_convolution_is_skipped_and_reported():
    torch.manual_seed(0)
    model = randomize_bn(_BNPlusInput()).eval()
    x = torch.randn(2, 3, 10, 10)
    gm, report = generic_pass(model, x[:1])
    assert executed_convs(gm, x) == 1 and report.convs == (1, 1)
    assert any("would add a convolution" in r.reason for r in report.skipped), report.skipped


class _Branches(nn.Module):
    """Branches (conv+BN of given kernels, an identity BN, a 1x1 in a Sequential) summed in a given order."""

    def __init__(self, c, kernels, order, functional_bn):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, bias=False) for k in kernels)
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for _ in kernels)
        self.identity = nn.BatchNorm2d(c)
        self.seq = nn.Sequential(nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)))
        self.order = order
        self.functional_bn = functional_bn

    def _bn(self, bn, x):
        if self.functional_bn:
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, bn.eps)
        return bn(x)

    def forward(self, x):
        terms = [self._bn(bn, conv(x)) for conv, bn in zip(self.convs, self.bns)]
        terms += [self._bn(self.identity, x), self.seq(x)]
        out = 0
        for i in self.order:
            out = out + terms[i] if i % 2 else terms[i] + out
        return F.relu(out)


@settings(max_examples=6, deadline=None)
@given(st.lists(st.sampled_from([1, 3, 5]), min_size=1, max_size=3), st.randoms(), st.booleans())
def test_branch_sums_in_any_order_become_one_conv(kernels, rnd, functional_bn):
    order = list(range(len(kernels) + 2))
    rnd.shuffle(order)
    torch.manual_seed(0)
    after, report = _check(_Branches(4, kernels, order, functional_bn), torch.randn(2, 4, 9, 9))
    assert after == 1 and not report.skipped, (order, report)


QUICK = ["repghostnet_050"]  # the others (mobileone_s0 ~30 s here) run with -m slow


@pytest.mark.parametrize("name", QUICK + [pytest.param(n, marks=pytest.mark.slow) for n in list_models() if n not in QUICK])
def test_zoo_generic_aten_runs_no_more_convs_than_block_aware(name):
    torch.manual_seed(0)
    model = randomize_bn(get_spec(name).factory(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    gm, report = generic_pass(model, x[:1])
    assert report.frontend == "aten"
    with torch.no_grad():
        if name in ILL_CONDITIONED_FP32:  # fp32 cannot tell there; the math is judged in fp64
            gm64, _ = generic_pass(model.double(), x[:1].double())  # .double() converts the model in place
            assert _rel(gm64(x.double()), model(x.double())) <= REL_TOL_FP64
            model.float()
        else:
            assert _rel(gm(x), model(x)) <= REL_TOL_FP32
    block = reparameterize(model)
    assert executed_convs(gm, x) <= executed_convs(block, x) <= executed_convs(model, x)


class _DataDependent(nn.Module):
    def forward(self, x):
        return x if float(x.sum()) > 0 else -x


def test_untraceable_by_export_falls_back_to_fx_and_says_so():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), _DataDependent()).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(Exception, match="torch.export cannot capture"):
        generic_pass(model, x, graph="aten")
    gm, report = generic_pass(model, x)
    assert report.frontend.startswith("fx (torch.export cannot capture") and report.opaque_modules == {"2": report.opaque_modules["2"]}
    assert report.chains and executed_convs(gm, x) == 1


class _InPlace(nn.Module):
    """A conv output read after an in-place ReLU mutated it, and summed with ``+=``."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(3, 3, 3, padding=1)
        self.c1 = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.c3(x)
        z = F.relu(y, inplace=True)  # y is z now
        out = (y + self.bn(self.c1(x))) * 2
        out += z
        return out


def test_in_place_ops_are_read_as_the_values_they_leave():
    torch.manual_seed(0)
    model = randomize_bn(_InPlace()).eval()
    x = torch.randn(2, 3, 8, 8)
    gm, _ = generic_pass(model, x[:1])
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= REL_TOL_FP32
    assert executed_convs(gm, x) <= 2


class _ChannelSlices(nn.Module):
    """Channel slices of dense convs (indexing and a chunk whose other piece is unused) summed."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return F.relu(self.a(x)[:, 2:6] + self.b(x).chunk(2, dim=1)[1])


def test_channel_slices_of_dense_convs_merge():
    torch.manual_seed(0)
    after, report = _check(_ChannelSlices(), torch.randn(2, 3, 8, 8))
    assert after == 1 and report.sets, report
