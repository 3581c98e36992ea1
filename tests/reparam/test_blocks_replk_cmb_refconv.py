import math
from unittest import mock

import pytest
import torch
from conftest import ODD_KERNELS, STRIDES, assert_fuses_exactly, block_channels, conv_out_size, dilations, spatial
from hypothesis import assume, given
from hypothesis import strategies as st

from edgerep.reparam.blocks.cmb import CircularMaskBlock, circular_mask, default_radii
from edgerep.reparam.blocks.refconv import RefConv
from edgerep.reparam.blocks.replk import ReparamLargeKernelConv


@given(
    channels=st.integers(1, 4),
    out_mult=st.sampled_from([1, 2]),
    dense_groups=st.sampled_from([None, 1]),
    sizes=st.sampled_from([(7, 3), (9, 5), (13, 5), (5, 5), (3, 1)]),
    stride=STRIDES,
    dilation=dilations(2),
    hw=spatial(6, 14),
)
def test_replk_fuses_exactly(channels, out_mult, dense_groups, sizes, stride, dilation, hw):
    large, small = sizes
    block = ReparamLargeKernelConv(channels, channels * out_mult, large, small, stride, dilation, dense_groups)
    assert block.lkb_origin.conv.groups == (channels if dense_groups is None else 1)
    assert_fuses_exactly(block, torch.randn(2, channels, *hw))


@pytest.mark.parametrize("sizes, match", [((31, 33), "cannot exceed"), ((30, 5), "odd"), ((31, 4), "odd")])
def test_replk_refuses(sizes, match):
    with pytest.raises(ValueError, match=match):
        ReparamLargeKernelConv(4, 4, *sizes)


def test_circular_masks():
    assert circular_mask(3, 0).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert circular_mask(3, 1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert circular_mask(3, math.sqrt(2)).tolist() == [[1, 1, 1]] * 3
    assert circular_mask(5, 2).sum() == 13  # distance <= 2: 1 + 4 + 4 + 4
    assert default_radii(3) == (1.0, math.sqrt(2.0))
    assert circular_mask(7, default_radii(7)[-1]).sum() == 49  # the last default radius is the full kernel


@given(
    channels=block_channels(groups=(1, 2), max_per_group=3),
    kernel=ODD_KERNELS,
    stride=STRIDES,
    dilation=dilations(2),
    pad_delta=st.integers(-2, 1),
    radii=st.one_of(st.none(), st.lists(st.floats(0, 3.5), min_size=1, max_size=4)),
    hw=spatial(6, 12),
)
def test_cmb_fuses_exactly(channels, kernel, stride, dilation, pad_delta, radii, hw):
    cin, cout, groups = channels
    padding = max(dilation * (kernel // 2) + pad_delta, 0)
    assume(all(conv_out_size(s, kernel, stride, padding, dilation) >= 1 for s in hw))
    block = CircularMaskBlock(cin, cout, kernel, stride, padding, dilation, groups, radii)
    assert len(block.bns) == len(block.radii)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


def test_cmb_shares_one_kernel_and_fuses_the_masked_sum():
    block = CircularMaskBlock(2, 3, 3).eval()
    assert [n for n, _ in block.named_parameters() if "bn" not in n] == ["conv.weight"]
    for bn in block.bns:  # identity BNs: the deploy kernel is W * sum of masks
        bn.eps = 0.0
    expected = block.conv.weight * (circular_mask(3, 1) + circular_mask(3, math.sqrt(2)))
    torch.testing.assert_close(block.fuse().weight, expected)


@pytest.mark.parametrize(
    "kwargs, match", [(dict(kernel_size=4), "odd"), (dict(radii=[]), "radius"), (dict(radii=[-1]), "radius")]
)
def test_cmb_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CircularMaskBlock(4, 4, **kwargs)


@given(
    channels=block_channels(groups=(1, 2), max_per_group=3),
    kernel_map=st.sampled_from([(3, 3), (3, 1), (5, 3), (5, 5)]),
    stride=STRIDES,
    dilation=dilations(2),
    bias=st.booleans(),
    norm=st.booleans(),
    hw=spatial(6, 12),
)
def test_refconv_fuses_exactly(channels, kernel_map, stride, dilation, bias, norm, hw):
    cin, cout, groups = channels
    kernel, map_k = kernel_map
    basis = torch.randn(cout, cin // groups, kernel, kernel)
    block = RefConv(cin, cout, kernel, stride, None, dilation, groups, bias, norm, map_k, basis)
    if bias:
        torch.nn.init.normal_(block.bias)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


@pytest.mark.parametrize("groups, cin, cout", [(1, 4, 6), (2, 4, 6), (4, 4, 4)])
def test_refconv_kernel_is_the_refocusing_conv_over_the_basis(groups, cin, cout):
    """The einsum in ``kernel()`` computes exactly the paper's R: convmap run on the kernels as an image."""
    block = RefConv(cin, cout, 5, groups=groups, map_k=3, basis=torch.randn(cout, cin // groups, 5, 5)).double()
    as_image = block.weight.reshape(1, -1, 5, 5)
    expected = block.weight + block.convmap(as_image).reshape(block.weight.shape)
    torch.testing.assert_close(block.kernel(), expected, rtol=1e-12, atol=1e-12)
    # The paper's grouping: G = in * out / groups^2 groups of `groups` kernels each.
    assert block.convmap.groups == cin * cout // groups**2


def test_refconv_basis_is_frozen_and_the_deploy_kernel_is_computed_once():
    basis = torch.randn(4, 2, 3, 3)
    block = RefConv(2, 4, 3, basis=basis, norm=True)
    assert "weight" in dict(block.named_buffers()) and "weight" not in dict(block.named_parameters())
    block(torch.randn(2, 2, 6, 6)).sum().backward()
    assert block.convmap.weight.grad is not None and block.weight.grad is None
    torch.testing.assert_close(block.weight, basis)  # training moves R, never the basis

    block.eval()
    deploy = block.fuse()
    assert type(deploy) is torch.nn.Conv2d
    assert {n for n, _ in deploy.named_parameters()} == {"weight", "bias"}
    x = torch.randn(1, 2, 6, 6)
    with mock.patch.object(RefConv, "kernel", side_effect=AssertionError("R recomputed")) as spy:
        deploy(x)
        assert spy.call_count == 0
        with pytest.raises(AssertionError, match="R recomputed"):
            block(x)  # the spy does catch the training form recomputing W


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=3, map_k=5), "map_k"),
        (dict(kernel_size=3, map_k=2), "map_k"),
        (dict(kernel_size=3, basis=torch.zeros(4, 4, 5, 5)), "shape"),
        (dict(kernel_size=3, groups=3), "divisible"),
    ],
)
def test_refconv_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RefConv(4, 4, **kwargs)
