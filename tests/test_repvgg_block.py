import torch
from hypothesis import given
from hypothesis import strategies as st

from edgerep.reparam import count_blocks, reparameterize
from edgerep.reparam.blocks.base import ReparamBlock
from edgerep.reparam.blocks.repvgg import RepVGGBlock
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
def test_repvgg_fuses_exactly(groups, per_group_in, out_mult, stride, dilation, kernel, hw, depthwise):
    cin = groups * per_group_in
    if depthwise:
        groups, cin = cin, cin
    cout = cin * out_mult
    block = RepVGGBlock(cin, cout, kernel, stride, dilation, groups)
    assert (block.identity is not None) == (cin == cout and stride == 1)
    assert_fuses_exactly(block, torch.randn(2, cin, *hw))


def test_fuse_is_idempotent_and_leaves_no_branches():
    model = torch.nn.Sequential(RepVGGBlock(4, 4), RepVGGBlock(4, 8, stride=2)).eval()
    once = reparameterize(model)
    assert count_blocks(model) == {"RepVGGBlock": 2}, "the source model must be left untouched"
    assert count_blocks(once) == {}
    assert not any(isinstance(m, ReparamBlock) for m in once.modules())
    names = {n for n, _ in once.named_parameters()}
    assert names == {"0.reparam_conv.weight", "0.reparam_conv.bias", "1.reparam_conv.weight", "1.reparam_conv.bias"}
    twice = reparameterize(once)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(once(x), twice(x), rtol=0, atol=0)


def test_train_mode_is_fixed_with_warning_or_refused():
    import pytest

    from edgerep.errors import BadInputError

    block = RepVGGBlock(4, 4).train()
    with pytest.warns(UserWarning, match="training mode"):
        reparameterize(block)
    with pytest.raises(BadInputError, match="eval"):
        reparameterize(block, train_mode="error")
