import pytest
import torch
from conftest import REL_TOL_FP32
from torch import nn

from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import convert_convs, count_blocks, reparameterize
from edgerep.reparam.blocks.acb import ACBlock
from edgerep.reparam.blocks.refconv import RefConv
from edgerep.zoo import resnet

BLOCK_CLASSES = {"acb": "ACBlock", "dbb": "DiverseBranchBlock", "cmb": "CircularMaskBlock", "refconv": "RefConv"}


def _convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.fixture(scope="module")
def plain_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return resnet.resnet18(num_classes=10)


@pytest.mark.parametrize("block", list(BLOCK_CLASSES))
def test_resnet18_trains_with_blocks_and_deploys_to_the_plain_convs(plain_resnet18, block):
    model = convert_convs(plain_resnet18, block)
    # The 7x7 stem and the sixteen 3x3s become blocks; the three 1x1 downsample convs stay plain.
    assert count_blocks(model) == {BLOCK_CLASSES[block]: 17}
    assert count_blocks(plain_resnet18) == {}, "the source model must be left untouched"
    randomize_bn(model, torch.Generator().manual_seed(0)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        deploy = reparameterize(model)
        err = output_error(ref, deploy(x))
    assert err.rel <= REL_TOL_FP32, f"{block}: rel error {err.rel:.3g}"
    assert count_blocks(deploy) == {}
    assert _convs(deploy) == _convs(plain_resnet18) == 20
    assert type(deploy.layer1[0].conv1) is nn.Conv2d and type(deploy.bn1) is nn.BatchNorm2d


def test_zoo_variants_are_converted_resnet18():
    for block, name in BLOCK_CLASSES.items():
        model = getattr(resnet, f"resnet18_{block}")(num_classes=5)
        assert count_blocks(model) == {name: 17}
        assert model.fc.out_features == 5


def test_resnet_key_layout_matches_timm_and_torchvision():
    keys = set(resnet.resnet50().state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer2.0.downsample.0.weight",
            "layer4.2.bn3.bias", "layer3.0.downsample.1.running_mean", "fc.weight", "fc.bias"} <= keys
    # Parameter counts of torchvision's / timm's models: the architectures agree exactly.
    counts = {f.__name__: sum(p.numel() for p in f().parameters()) for f in (resnet.resnet18, resnet.resnet34)}
    assert counts == {"resnet18": 11_689_512, "resnet34": 21_797_672}
    assert sum(p.numel() for p in resnet.resnet50().parameters()) == 25_557_032


def test_copy_weights_initialises_from_the_existing_conv():
    conv = nn.Conv2d(3, 4, 3, 2, 1, bias=True)
    acb = convert_convs(nn.Sequential(conv), "acb", copy_weights=True)[0]
    torch.testing.assert_close(acb.square_conv.weight, conv.weight)
    assert acb.square_conv.stride == (2, 2)
    fresh = convert_convs(nn.Sequential(conv), "acb")[0]
    assert not torch.equal(fresh.square_conv.weight, conv.weight)

    ref = convert_convs(nn.Sequential(conv), "refconv")[0]  # RefConv always takes the kernel as its basis
    torch.testing.assert_close(ref.weight, conv.weight)
    torch.testing.assert_close(ref.bias, conv.bias)
    assert ref.bias.requires_grad and not ref.weight.requires_grad
    with pytest.raises(ValueError, match="copy_weights"):
        convert_convs(nn.Sequential(conv), "refconv", copy_weights=False)


def test_what_is_skipped():
    class SameConv(nn.Conv2d):  # a subclass may compute something else: left alone
        pass

    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.Conv2d(4, 4, (3, 1), padding=(1, 0)),
        nn.Conv2d(4, 4, 4),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        SameConv(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 5, padding=2),
        ACBlock(4, 4),
    )
    out = convert_convs(model, "dbb")
    assert [type(m).__name__ for m in out] == [
        "Conv2d", "Conv2d", "Conv2d", "Conv2d", "SameConv", "DiverseBranchBlock", "ACBlock"
    ]
    assert type(out[6].square_conv) is nn.Conv2d, "convs inside blocks are never converted"
    assert [type(m).__name__ for m in convert_convs(model, "cmb", min_kernel=7)][5] == "Conv2d"
    assert type(convert_convs(model, "acb", min_kernel=1)[0]).__name__ == "ACBlock"


def test_refused_convs_stay_plain_with_one_warning():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=0), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=(1, 2))
    )
    with pytest.warns(UserWarning, match=r"2 conv\(s\) kept.*0: DBB needs 'same' padding.*2: non-square stride"):
        out = convert_convs(model, "dbb")
    assert [type(m).__name__ for m in out] == ["Conv2d", "DiverseBranchBlock", "Conv2d"]


def test_conversion_is_idempotent_keeps_mode_and_handles_string_padding():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, padding="valid")).double().eval()
    once = convert_convs(model, "acb")
    twice = convert_convs(once, "acb")
    assert count_blocks(twice) == count_blocks(once) == {"ACBlock": 2}
    assert not once.training and all(p.dtype == torch.float64 for p in once.parameters())
    assert (once[0].square_conv.padding, once[1].square_conv.padding) == ((1, 1), (0, 0))
    single = convert_convs(nn.Conv2d(3, 4, 3), "cmb", copy_weights=True)  # a bare conv is replaced too
    assert type(single).__name__ == "CircularMaskBlock"
    assert type(convert_convs(single, "acb").conv) is nn.Conv2d  # ... and a bare block is left alone
    with pytest.raises(ValueError, match="unknown block"):
        convert_convs(model, "repvgg")


def test_refconv_kwargs_reach_the_block():
    model = convert_convs(nn.Sequential(nn.Conv2d(2, 2, 5, padding=2)), "refconv", map_k=5)
    assert isinstance(model[0], RefConv) and model[0].convmap.kernel_size == (5, 5)
