import pytest
import torch
from conftest import ODD_KERNELS, STRIDES, assert_fuses_exactly, block_channels, dilations, spatial
from hypothesis import given

from edgerep.reparam.blocks.qarepvgg import QARepVGGBlock

# Idempotence and the deploy layout are tested with RepVGG's in test_repvgg_block.py (same deploy form).


@given(channels=block_channels(), stride=STRIDES, dilation=dilations(3), kernel=ODD_KERNELS, hw=spatial(5, 12))
def test_qarepvgg_fuses_exactly(channels, stride, dilation, kernel, hw):
    cin, cout, groups = channels
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


def test_kernel_bias_is_differentiable():
    block = QARepVGGBlock(4, 4, groups=2).eval()
    kernel, bias = block.get_kernel_bias()
    (kernel.sum() + bias.sum()).backward()
    for p in (block.conv_kxk.conv.weight, block.conv_1x1.weight, block.bn.weight, block.conv_kxk.bn.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd kernel"):
        QARepVGGBlock(4, 4, kernel_size=2)
