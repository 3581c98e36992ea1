import pytest
import torch
from conftest import ODD_KERNELS, STRIDES, assert_fuses_exactly, block_channels, dilations, spatial
from hypothesis import given

from edgerep.errors import BadInputError
from edgerep.reparam import count_blocks, reparameterize
from edgerep.reparam.blocks.base import FusedConv, ReparamBlock
from edgerep.reparam.blocks.qarepvgg import QARepVGGBlock
from edgerep.reparam.blocks.repvgg import RepVGGBlock


@given(channels=block_channels(), stride=STRIDES, dilation=dilations(3), kernel=ODD_KERNELS, hw=spatial(5, 12))
def test_repvgg_fuses_exactly(channels, stride, dilation, kernel, hw):
    cin, cout, groups = channels
    block = RepVGGBlock(cin, cout, kernel, stride, dilation, groups)
    assert (block.identity is not None) == (cin == cout and stride == 1)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


@pytest.mark.parametrize("block", [RepVGGBlock, QARepVGGBlock])
def test_fuse_is_idempotent_and_leaves_no_branches(block):
    model = torch.nn.Sequential(block(4, 4), block(4, 8, stride=2)).eval()
    once = reparameterize(model)
    assert count_blocks(model) == {block.__name__: 2}, "the source model must be left untouched"
    assert count_blocks(once) == {}
    assert all(isinstance(m, FusedConv) for m in once)
    assert not any(isinstance(m, (ReparamBlock, torch.nn.BatchNorm2d)) for m in once.modules())
    names = {n for n, _ in once.named_parameters()}
    assert names == {"0.reparam_conv.weight", "0.reparam_conv.bias", "1.reparam_conv.weight", "1.reparam_conv.bias"}
    twice = reparameterize(once)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(once(x), twice(x), rtol=0, atol=0)


def test_train_mode_is_fixed_with_warning_or_refused():
    block = RepVGGBlock(4, 4).train()
    with pytest.warns(UserWarning, match="training mode"):
        reparameterize(block)
    with pytest.raises(BadInputError, match="eval"):
        reparameterize(block, train_mode="error")
