import pytest
import torch
import torch.nn.functional as F
from conftest import ODD_KERNELS, STRIDES, assert_fuses_exactly, block_channels, conv_out_size, dilations, spatial
from hypothesis import assume, given
from hypothesis import strategies as st

from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import reparameterize
from edgerep.reparam.blocks.acb import ACBlock
from edgerep.reparam.blocks.base import ReparamBlock
from edgerep.reparam.blocks.dbb import BNAndPad, DiverseBranchBlock, IdentityBasedConv1x1


@given(
    channels=block_channels(groups=(1, 2), max_per_group=3),
    kernel=ODD_KERNELS,
    stride=STRIDES,
    dilation=dilations(2),
    pad_delta=st.tuples(st.integers(-4, 2), st.integers(-4, 2)),
    hw=spatial(6, 12),
)
def test_acb_fuses_exactly(channels, kernel, stride, dilation, pad_delta, hw):
    cin, cout, groups = channels
    reach = dilation * (kernel // 2)
    padding = tuple(max(reach + d, 0) for d in pad_delta)  # below, at and above "same": crop or pad
    assume(all(conv_out_size(s, kernel, stride, p, dilation) >= 1 for s, p in zip(hw, padding)))
    block = ACBlock(cin, cout, kernel, stride, padding, dilation, groups)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


def test_acb_crops_like_acnet_when_padding_is_small():
    block = ACBlock(2, 2, 3, padding=0)
    assert (block.ver_crop, block.hor_crop) == (1, 1)
    assert block.ver_conv.padding == (0, 0) and block.hor_conv.padding == (0, 0)
    assert_fuses_exactly(block, torch.randn(1, 2, 7, 9))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=4), "odd kernel"),
        (dict(kernel_size=3, padding=-1), "padding"),
    ],
)
def test_acb_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ACBlock(4, 4, **kwargs)


@given(
    channels=block_channels(groups=(1, 2), max_per_group=3),
    kernel=ODD_KERNELS,
    stride=STRIDES,
    dilation=dilations(2),
    internal_mult=st.sampled_from([None, 1, 2]),
    hw=spatial(5, 10),
)
def test_dbb_fuses_exactly(channels, kernel, stride, dilation, internal_mult, hw):
    cin, cout, groups = channels
    internal = None if internal_mult is None else cin * internal_mult
    block = DiverseBranchBlock(cin, cout, kernel, stride, None, dilation, groups, internal)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


def test_dbb_branch_layout_follows_the_original():
    dense = DiverseBranchBlock(4, 8, 3)
    assert dense.dbb_1x1 is not None and hasattr(dense.dbb_avg, "conv")
    assert isinstance(dense.dbb_1x1_kxk.idconv1, IdentityBasedConv1x1)
    depthwise = DiverseBranchBlock(4, 4, 3, groups=4)
    assert depthwise.dbb_1x1 is None and not hasattr(depthwise.dbb_avg, "conv")
    assert depthwise.dbb_1x1_kxk.conv1.out_channels == 8  # 2x internal channels
    keys = set(dense.state_dict())
    assert {"dbb_origin.conv.weight", "dbb_avg.bn.bn.running_mean", "dbb_1x1_kxk.idconv1.weight"} <= keys
    # The identity-based 1x1 starts as the identity: the 1x1 -> kxk branch is a plain kxk at init.
    torch.testing.assert_close(dense.dbb_1x1_kxk.idconv1.kernel().squeeze(), torch.eye(4))


def test_dbb_needs_bn_and_pad_to_be_exact(monkeypatch):
    """Padding the intermediate map with zeros (what a plain conv would do) breaks the fusion at the border."""
    block = randomize_bn(DiverseBranchBlock(3, 4, 3), torch.Generator().manual_seed(1)).eval()
    x = torch.randn(2, 3, 9, 9)
    fused = reparameterize(block)
    with torch.no_grad():
        assert output_error(block(x), fused(x)).rel < 1e-6

        def zero_pad(self, x):
            return F.pad(self.bn(x), [self.pad] * 4)

        monkeypatch.setattr(BNAndPad, "forward", zero_pad)
        wrong = block(x)
        deploy = fused(x)
    assert output_error(deploy, wrong).rel > 1e-2, "the padding value must matter"
    # ... and only the 1-pixel border (reach of the 3x3) differs: the interior sees no padding.
    torch.testing.assert_close(wrong[..., 1:-1, 1:-1], deploy[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=2), "odd kernel"),
        (dict(kernel_size=3, padding=0), "same"),
        (dict(kernel_size=3, dilation=2, padding=1), "same"),
        (dict(kernel_size=3, groups=2, internal_channels=3), "divisible"),
    ],
)
def test_dbb_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiverseBranchBlock(4, 4, **kwargs)


@pytest.mark.parametrize("make", [lambda: ACBlock(4, 6, 3, stride=2), lambda: DiverseBranchBlock(4, 6, 3, stride=2)])
def test_fuse_gives_a_plain_conv_and_a_differentiable_kernel(make):
    block = make().eval()
    deploy = block.fuse()
    assert type(deploy) is torch.nn.Conv2d and not isinstance(deploy, ReparamBlock)
    assert deploy.stride == (2, 2) and deploy.kernel_size == (3, 3)
    assert {n for n, _ in deploy.named_parameters()} == {"weight", "bias"}
    kernel, bias = block.get_kernel_bias()
    (kernel.sum() + bias.sum()).backward()
    assert all(p.grad is not None for p in block.parameters())
