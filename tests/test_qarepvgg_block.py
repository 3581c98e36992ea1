import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edgerep.reparam import count_blocks, reparameterize
from edgerep.reparam.blocks.base import FusedConv, ReparamBlock
from edgerep.reparam.blocks.qarepvgg import QARepVGGBlock
from conftest import assert_fuses_exactly


@given(
    groups=st.sampled_from([1, 2, 4]),
    per_group_in=st.integers(1, 4),
    out_mult=st.sampled_from([1, 2]),
    stride=st.sampled_from([1, 2]),
    dilation=st.sampled_from([1, 2, 3]),
    kernel=st.sampled_from([1, 3, 5]),
    hw=st.tuples(st.integers(5, 12), st.integers(5, 12)),
    depthwise=st.booleans(),
)
def test_qarepvgg_fuses_exactly(groups, per_group_in, out_mult, stride, dilation, kernel, hw, depthwise):
    cin = groups * per_group_in
    if depthwise:
        groups, cin = cin, cin
    cout = cin * out_mult
    block = QARepVGGBlock(cin, cout, kernel, stride, dilation, groups)
    assert block.has_identity == (cin == cout and stride == 1)
    with torch.no_grad():  # non-trivial 1x1 weights: default init is small next to the identity
        block.conv_1x1.weight.mul_(3.0)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


def test_train_form_is_the_paper_form():
    """Only the kxk branch has its own BN; 1x1 and identity are added raw, then one BN, then ReLU."""
    torch.manual_seed(0)
    block = QARepVGGBlock(4, 4).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        ref = block.bn(block.conv_kxk.bn(block.conv_kxk.conv(x)) + block.conv_1x1(x) + x).relu()
        torch.testing.assert_close(block(x), ref, rtol=0, atol=0)
    assert {n.split(".")[0] for n, _ in block.named_parameters()} == {"conv_kxk", "conv_1x1", "bn"}
    assert block.conv_1x1.bias is None


def test_fuse_is_idempotent_and_leaves_no_branches():
    model = torch.nn.Sequential(QARepVGGBlock(4, 4), QARepVGGBlock(4, 8, stride=2)).eval()
    once = reparameterize(model)
    assert count_blocks(model) == {"QARepVGGBlock": 2}, "the source model must be left untouched"
    assert count_blocks(once) == {}
    assert all(isinstance(m, FusedConv) for m in once)
    assert not any(isinstance(m, (ReparamBlock, torch.nn.BatchNorm2d)) for m in once.modules())
    names = {n for n, _ in once.named_parameters()}
    assert names == {"0.reparam_conv.weight", "0.reparam_conv.bias", "1.reparam_conv.weight", "1.reparam_conv.bias"}
    twice = reparameterize(once)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(once(x), twice(x), rtol=0, atol=0)


def test_kernel_bias_is_differentiable():
    block = QARepVGGBlock(4, 4, groups=2).eval()
    kernel, bias = block.get_kernel_bias()
    (kernel.sum() + bias.sum()).backward()
    for p in (block.conv_kxk.conv.weight, block.conv_1x1.weight, block.bn.weight, block.conv_kxk.bn.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd kernel"):
        QARepVGGBlock(4, 4, kernel_size=2)
