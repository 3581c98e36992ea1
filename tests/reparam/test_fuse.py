"""Each primitive of edgerep.reparam.fuse against plain torch ops, in float64 (only rounding remains)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ODD_KERNELS, STRIDES, dilations, grouped_channels, spatial
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from edgerep.proof.numerics import randomize_bn
from edgerep.reparam.fuse import (
    KernelBias,
    add_branches,
    avg_pool_kernel,
    bn_scale_shift,
    concat_branches,
    conv_kernel_bias,
    fold_bn,
    identity_kernel,
    make_conv,
    merge_sequential,
    pad_kernel,
    scale_kernel,
)

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)

groups_st = st.sampled_from([1, 2, 3])
per_group = st.integers(1, 3)
channels_st = grouped_channels(groups=(1, 2, 3), max_per_group=3)  # (channels, groups), depthwise included
hw_st = spatial(9, 12)  # fits a 5x5 kernel at dilation 2


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def random_bn(n: int, seed: int = 0, affine: bool = True) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(n, affine=affine).to(D)
    randomize_bn(bn, torch.Generator().manual_seed(seed))
    return bn.eval()


# --- fold_bn / bn_scale_shift --------------------------------------------------------------------


@given(
    cg=channels_st, pout=per_group, k=ODD_KERNELS, stride=STRIDES, dilation=dilations(2),
    padding=st.integers(0, 2), has_bias=st.booleans(), affine=st.booleans(), hw=hw_st,
)
def test_fold_bn_equals_conv_then_eval_bn(cg, pout, k, stride, dilation, padding, has_bias, affine, hw):
    cin, g = cg
    cout = g * pout
    w, b = rand(cout, cin // g, k, k, seed=1), (rand(cout, seed=2) if has_bias else None)
    bn = random_bn(cout, affine=affine)
    x = rand(2, cin, *hw, seed=3)
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=g)
    ref = bn(F.conv2d(x, w, b, **geo))
    kb = fold_bn(w, b, bn)
    torch.testing.assert_close(F.conv2d(x, kb.kernel, kb.bias, **geo), ref, **TOL)


def test_bn_scale_shift_covers_batchnorm1d_and_refuses_untracked_stats():
    bn = nn.BatchNorm1d(5).to(D)
    randomize_bn(bn, torch.Generator().manual_seed(0))
    bn.eval()
    x = rand(7, 5)
    scale, shift = bn_scale_shift(bn)
    torch.testing.assert_close(x * scale + shift, bn(x), **TOL)
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(rand(4, 2, 3, 3), None, nn.BatchNorm2d(4, track_running_stats=False))


def test_fold_bn_is_differentiable():
    bn = random_bn(3)
    w = rand(3, 2, 3, 3).requires_grad_()
    b = rand(3, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda w, b: fold_bn(w, b, bn), (w, b))
    fold_bn(w, b, bn).kernel.sum().backward()
    assert bn.weight.grad is not None, "BN affine parameters must receive gradients (QAT)"


# --- identity_kernel ------------------------------------------------------------------------------


@given(cg=channels_st, kh=ODD_KERNELS, kw=ODD_KERNELS, dilation=dilations(2), hw=hw_st)
def test_identity_kernel_is_identity(cg, kh, kw, dilation, hw):
    c, g = cg
    kernel = identity_kernel(c, g, (kh, kw), dtype=D)
    assert kernel.shape == (c, c // g, kh, kw) and kernel.dtype == D
    x = rand(2, c, *hw)
    pad = (kh // 2 * dilation, kw // 2 * dilation)
    torch.testing.assert_close(F.conv2d(x, kernel, padding=pad, dilation=dilation, groups=g), x, rtol=0, atol=0)


@pytest.mark.parametrize("size", [2, (3, 2), (4, 1)])
def test_identity_kernel_refuses_even_sizes(size):
    with pytest.raises(ValueError, match="odd"):
        identity_kernel(4, 1, size)


def test_identity_kernel_refuses_indivisible_groups():
    with pytest.raises(ValueError, match="divisible"):
        identity_kernel(6, 4)


# --- pad_kernel / add_branches ---------------------------------------------------------------------


small_shapes = st.sampled_from([(1, 1), (1, 3), (3, 1), (3, 3), (1, 5)])


@given(
    shape=small_shapes, grow=st.tuples(st.integers(0, 2), st.integers(0, 2)), cg=channels_st,
    stride=STRIDES, dilation=dilations(3), hw=hw_st,
)
def test_pad_kernel_keeps_the_conv(shape, grow, cg, stride, dilation, hw):
    c, g = cg
    kh, kw = shape
    th, tw = kh + 2 * grow[0], kw + 2 * grow[1]
    w = rand(c, c // g, kh, kw)
    x = rand(2, c, *hw, seed=1)
    geo = dict(stride=stride, dilation=dilation, groups=g)
    ref = F.conv2d(x, w, padding=(kh // 2 * dilation, kw // 2 * dilation), **geo)
    padded = pad_kernel(w, (th, tw))
    assert padded.shape[-2:] == (th, tw)
    out = F.conv2d(x, padded, padding=(th // 2 * dilation, tw // 2 * dilation), **geo)
    torch.testing.assert_close(out, ref, **TOL)  # the zero taps only change the summation order


def test_pad_kernel_same_size_is_a_no_op():
    w = rand(2, 2, 3, 3)
    assert pad_kernel(w, 3) is w


@pytest.mark.parametrize(
    "kernel, size",
    [((3, 3), 1), ((1, 1), 2), ((1, 3), (3, 4)), ((3, 3), (5, 2)), ((2, 2), 3)],
)
def test_pad_kernel_refuses_sizes_it_cannot_centre(kernel, size):
    with pytest.raises(ValueError, match="cannot centre"):
        pad_kernel(rand(2, 2, *kernel), size)


@given(
    sizes=st.lists(small_shapes, min_size=1, max_size=4), cg=channels_st, stride=STRIDES, dilation=dilations(2),
    hw=hw_st,
)
def test_add_branches_equals_sum_of_convs(sizes, cg, stride, dilation, hw):
    c, g = cg
    branches = [KernelBias(rand(c, c // g, *size, seed=i), rand(c, seed=100 + i)) for i, size in enumerate(sizes)]
    x = rand(2, c, *hw, seed=1000)
    geo = dict(stride=stride, dilation=dilation, groups=g)
    same = lambda k: (k.shape[2] // 2 * dilation, k.shape[3] // 2 * dilation)  # noqa: E731
    ref = sum(F.conv2d(x, k, b, padding=same(k), **geo) for k, b in branches)
    kb = add_branches(branches)
    kh, kw = kb.kernel.shape[-2:]
    assert (kh, kw) == (max(s[0] for s in sizes), max(s[1] for s in sizes))
    out = F.conv2d(x, kb.kernel, kb.bias, padding=(kh // 2 * dilation, kw // 2 * dilation), **geo)
    torch.testing.assert_close(out, ref, **TOL)


def test_add_branches_refuses_nothing_and_mixed_parity():
    with pytest.raises(ValueError, match="no branches"):
        add_branches([])
    with pytest.raises(ValueError, match="cannot centre"):
        add_branches([KernelBias(rand(2, 2, 2, 2), rand(2)), KernelBias(rand(2, 2, 3, 3), rand(2))])


def test_add_branches_refuses_channel_mismatch():
    depthwise = KernelBias(rand(4, 1, 3, 3), rand(4))
    dense = KernelBias(rand(4, 4, 3, 3), rand(4))
    with pytest.raises(ValueError):
        add_branches([depthwise, dense])


# --- merge_sequential -----------------------------------------------------------------------------


def pad_with_values(y: torch.Tensor, pad: tuple[int, int], values: torch.Tensor) -> torch.Tensor:
    """Pad each channel of ``y`` with its own constant (what the intermediate map of 1x1 -> kxk really sees)."""
    ph, pw = pad
    return torch.cat(
        [F.pad(y[:, c : c + 1], [pw, pw, ph, ph], value=float(values[c])) for c in range(y.shape[1])], dim=1
    )


@given(
    g=groups_st, pin=per_group, pmid=per_group, pout=per_group, k=ODD_KERNELS, padding=st.integers(0, 2),
    stride=STRIDES, dilation=dilations(2), depthwise=st.booleans(), hw=hw_st,
)
def test_merge_sequential_equals_1x1_then_kxk_with_bias_padding(
    g, pin, pmid, pout, k, padding, stride, dilation, depthwise, hw
):
    if depthwise:
        pin = pmid = pout = 1
    cin, cmid, cout = g * pin, g * pmid, g * pout
    first = KernelBias(rand(cmid, pin, 1, 1, seed=1), rand(cmid, seed=2))
    second = KernelBias(rand(cout, pmid, k, k, seed=3), rand(cout, seed=4))
    x = rand(2, cin, *hw, seed=5)
    geo = dict(stride=stride, dilation=dilation, groups=g)
    y1 = F.conv2d(x, first.kernel, first.bias, groups=g)
    ref = F.conv2d(pad_with_values(y1, (padding, padding), first.bias), second.kernel, second.bias, **geo)
    kb = merge_sequential(first, second, groups=g)
    assert kb.kernel.shape == (cout, pin, k, k)
    torch.testing.assert_close(F.conv2d(x, kb.kernel, kb.bias, padding=padding, **geo), ref, **TOL)
    if padding > 0:
        zero_padded = F.conv2d(y1, second.kernel, second.bias, padding=padding, **geo)
        assert not torch.allclose(zero_padded, ref, rtol=1e-6, atol=1e-6), "zero padding should differ at the border"


def test_merge_sequential_zero_padding_is_not_exact_but_interior_is():
    first = KernelBias(rand(4, 3, 1, 1, seed=1), rand(4, seed=2))
    second = KernelBias(rand(5, 4, 3, 3, seed=3), rand(5, seed=4))
    x = rand(1, 3, 8, 8, seed=5)
    kb = merge_sequential(first, second)
    merged = F.conv2d(x, kb.kernel, kb.bias, padding=1)
    zero_padded = F.conv2d(F.conv2d(x, first.kernel, first.bias), second.kernel, second.bias, padding=1)
    diff = (merged - zero_padded).abs()
    assert diff[..., 1:-1, 1:-1].max() < 1e-12, "the interior never sees padding"
    assert diff.max() > 1e-2, "the border does: zero padding of the intermediate is not the merged conv"


def test_merge_sequential_refuses_bad_shapes():
    with pytest.raises(ValueError, match="1x1 first"):
        merge_sequential(KernelBias(rand(4, 3, 3, 3), rand(4)), KernelBias(rand(5, 4, 3, 3), rand(5)))
    with pytest.raises(ValueError, match="channel mismatch"):
        merge_sequential(KernelBias(rand(4, 3, 1, 1), rand(4)), KernelBias(rand(5, 3, 3, 3), rand(5)))
    with pytest.raises(ValueError, match="channel mismatch"):
        merge_sequential(KernelBias(rand(4, 3, 1, 1), rand(4)), KernelBias(rand(4, 4, 3, 3), rand(4)), groups=2)


def test_merge_sequential_is_differentiable():
    w1, b1 = rand(4, 3, 1, 1).requires_grad_(), rand(4, seed=1).requires_grad_()
    w2, b2 = rand(2, 2, 3, 3, seed=2).requires_grad_(), rand(2, seed=3).requires_grad_()
    fn = lambda w1, b1, w2, b2: tuple(merge_sequential(KernelBias(w1, b1), KernelBias(w2, b2), groups=2))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (w1, b1, w2, b2))


# --- avg_pool_kernel -------------------------------------------------------------------------------


@given(cg=channels_st, k=st.integers(1, 4), stride=STRIDES, pad_frac=st.sampled_from([0.0, 0.5, 1.0]), hw=hw_st)
def test_avg_pool_kernel_equals_avg_pool(cg, k, stride, pad_frac, hw):
    c, g = cg
    padding = int(k // 2 * pad_frac)
    x = rand(2, c, *hw)
    ref = F.avg_pool2d(x, k, stride, padding, count_include_pad=True)
    kernel = avg_pool_kernel(c, k, g, dtype=D)
    assert kernel.shape == (c, c // g, k, k) and kernel.dtype == D
    torch.testing.assert_close(F.conv2d(x, kernel, stride=stride, padding=padding, groups=g), ref, **TOL)


# --- concat_branches / scale_kernel ----------------------------------------------------------------


@given(outs=st.lists(st.integers(1, 4), min_size=1, max_size=3), cin=st.integers(1, 4), k=ODD_KERNELS, hw=hw_st)
def test_concat_branches_equals_channel_concat(outs, cin, k, hw):
    branches = [KernelBias(rand(o, cin, k, k, seed=i), rand(o, seed=10 + i)) for i, o in enumerate(outs)]
    x = rand(2, cin, *hw, seed=99)
    ref = torch.cat([F.conv2d(x, kb.kernel, kb.bias, padding=k // 2) for kb in branches], dim=1)
    kb = concat_branches(branches)
    torch.testing.assert_close(F.conv2d(x, kb.kernel, kb.bias, padding=k // 2), ref, **TOL)


def test_concat_branches_with_groups_needs_per_group_pieces():
    """With groups > 1 a plain concat is right only if each piece is one group's whole output block.

    Two grouped branches concatenated channel-wise are NOT the grouped conv of the concatenated kernels:
    the conv assigns output channels to groups by position. This pins the limitation (see the report).
    """
    x = rand(1, 4, 5, 5)
    a, b = KernelBias(rand(2, 2, 1, 1, seed=1), rand(2, seed=2)), KernelBias(rand(2, 2, 1, 1, seed=3), rand(2, seed=4))
    ref = torch.cat([F.conv2d(x, a.kernel, a.bias, groups=2), F.conv2d(x, b.kernel, b.bias, groups=2)], dim=1)
    kb = concat_branches([a, b])
    assert not torch.allclose(F.conv2d(x, kb.kernel, kb.bias, groups=2), ref)
    # Per-group pieces (group 0's outputs of both branches, then group 1's) in grouped order are right.
    per_group = concat_branches([KernelBias(a.kernel[:1], a.bias[:1]), KernelBias(b.kernel[:1], b.bias[:1]),
                                 KernelBias(a.kernel[1:], a.bias[1:]), KernelBias(b.kernel[1:], b.bias[1:])])
    torch.testing.assert_close(F.conv2d(x, per_group.kernel, per_group.bias, groups=2), ref[:, [0, 2, 1, 3]], **TOL)


@given(cg=channels_st, k=ODD_KERNELS, hw=hw_st)
def test_scale_kernel_equals_scaling_the_output(cg, k, hw):
    c, g = cg
    kb = KernelBias(rand(c, c // g, k, k), rand(c, seed=1))
    scale = rand(c, seed=2)
    x = rand(2, c, *hw, seed=3)
    ref = F.conv2d(x, kb.kernel, kb.bias, padding=k // 2, groups=g) * scale.reshape(1, -1, 1, 1)
    s = scale_kernel(kb, scale)
    torch.testing.assert_close(F.conv2d(x, s.kernel, s.bias, padding=k // 2, groups=g), ref, **TOL)


# --- conv_kernel_bias / make_conv -------------------------------------------------------------------


@given(
    g=groups_st, pin=per_group, pout=per_group, kh=ODD_KERNELS, kw=ODD_KERNELS, stride=st.sampled_from([1, 2, (1, 2)]),
    padding=st.sampled_from([0, 1, (2, 1)]), dilation=st.sampled_from([1, 2, (2, 1)]),
    mode=st.sampled_from(["zeros", "reflect", "circular"]), has_bias=st.booleans(), hw=hw_st,
)
def test_make_conv_copies_geometry_and_weights(g, pin, pout, kh, kw, stride, padding, dilation, mode, has_bias, hw):
    cin, cout = g * pin, g * pout
    like = nn.Conv2d(cin, cout, (kh, kw), stride, padding, dilation, g, bias=has_bias, padding_mode=mode).to(D)
    kb = conv_kernel_bias(like)
    if not has_bias:
        assert torch.equal(kb.bias, torch.zeros(cout, dtype=D))
    conv = make_conv(kb, like)
    geometry = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
    for attr in geometry:
        assert getattr(conv, attr) == getattr(like, attr), attr
    assert conv.weight.dtype == D and conv.bias is not None
    x = rand(2, cin, *hw)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), like(x), rtol=0, atol=0)


def test_make_conv_override_and_detached_leaves():
    like = nn.Conv2d(4, 4, 1, stride=2).to(D)
    kb = KernelBias(rand(6, 4, 3, 3).requires_grad_(), rand(6, seed=1).requires_grad_())
    conv = make_conv(kb, like, padding=1)
    assert conv.padding == (1, 1) and conv.stride == (2, 2) and conv.out_channels == 6 and conv.kernel_size == (3, 3)
    assert conv.weight.grad_fn is None and conv.weight.is_leaf and conv.weight.requires_grad
    x = rand(1, 4, 7, 7, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, kb.kernel, kb.bias, stride=2, padding=1), rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        make_conv(KernelBias(rand(4, 3, 3, 3), rand(4)), like)  # kernel does not fit like.in_channels
