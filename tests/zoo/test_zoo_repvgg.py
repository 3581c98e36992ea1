import operator
from collections import Counter

import pytest
import torch
from conftest import assert_fuses_exactly, meta_model, shared_path
from torch import fx, nn

from edgerep.reparam import count_blocks, reparameterize
from edgerep.reparam.blocks.base import ReparamBlock
from edgerep.reparam.blocks.qarepvgg import QARepVGGBlock
from edgerep.reparam.blocks.repvgg import RepVGGBlock
from edgerep.zoo import create_model, get_spec, list_models
from edgerep.zoo.repvgg import ARCHS, RepVGG, RepVGGArch

REPVGG = [
    f"repvgg_{v}" for v in ("a0", "a1", "a2", "b0", "b1", "b1g2", "b1g4", "b2", "b2g2", "b2g4", "b3", "b3g2", "b3g4")
]
QAREPVGG = [f"qarepvgg_{v}" for v in ("a0", "a1", "a2", "b0")]


def blocks(model: nn.Module) -> list[ReparamBlock]:
    return [m for m in model.modules() if isinstance(m, ReparamBlock)]


def test_every_variant_is_registered_in_its_family():
    assert list_models("repvgg") == sorted([*REPVGG, "repvgg_a0_narrow"])  # + the CIFAR-sized shipped model
    assert list_models("qarepvgg") == sorted(QAREPVGG)
    assert get_spec("qarepvgg_b0").family == "qarepvgg"


@pytest.mark.parametrize("name", REPVGG + QAREPVGG)
def test_architecture_follows_the_paper(name):
    """Depths, widths, stem min(64, 64a) and the original's group map (global layers 2, 4, ..., 26)."""
    arch = ARCHS[name.split("_")[1]]
    model = meta_model(name)
    block_type = QARepVGGBlock if name.startswith("qa") else RepVGGBlock
    assert all(type(b) is block_type for b in blocks(model))
    assert [len(s) for s in model.stages] == list(arch.depths)
    stem = model.stem.conv_kxk.conv
    assert (stem.in_channels, stem.out_channels, stem.stride) == (3, min(64, int(64 * arch.widths[0])), (2, 2))
    layer = 0  # the original counts blocks from 1 over the whole net, stem excluded
    for stage, width, base in zip(model.stages, arch.widths, (64, 128, 256, 512)):
        for i, block in enumerate(stage):
            layer += 1
            conv = block.conv_kxk.conv
            assert conv.out_channels == int(base * width)
            assert conv.stride == ((2, 2) if i == 0 else (1, 1))
            assert conv.groups == (arch.groups if layer in range(2, 27, 2) else 1), (name, layer)
            assert getattr(block.conv_1x1, "conv", block.conv_1x1).groups == conv.groups
    assert model.head.fc.in_features == int(512 * arch.widths[3]) and model.head.fc.out_features == 1000


@pytest.mark.parametrize(
    ("name", "deploy_params_m"), [("repvgg_a0", 8.30), ("repvgg_b0", 14.33), ("repvgg_b1g4", 36.12)]
)
def test_deploy_parameter_count_matches_the_paper(name, deploy_params_m):
    model = meta_model(name)
    count = sum(b.conv_kxk.conv.weight.numel() + b.conv_kxk.conv.out_channels for b in blocks(model))
    count += sum(p.numel() for p in model.head.parameters())
    assert abs(count / 1e6 - deploy_params_m) < 0.02


def test_names_follow_timm_byobnet():
    keys = meta_model("repvgg_b1g4").state_dict()
    assert keys["stem.conv_kxk.conv.weight"].shape == (64, 3, 3, 3)
    assert keys["stem.conv_1x1.bn.running_var"].shape == (64,)
    assert "stem.identity.weight" not in keys and "stages.0.0.identity.weight" not in keys
    assert keys["stages.0.1.identity.weight"].shape == (128,)
    assert keys["stages.0.1.conv_kxk.conv.weight"].shape == (128, 32, 3, 3), "g4 block"
    assert keys["stages.0.0.conv_kxk.conv.weight"].shape == (128, 64, 3, 3), "first block: dense"
    assert keys["head.fc.weight"].shape == (1000, 2048)
    qa = meta_model("qarepvgg_a0").state_dict()
    assert {"stages.0.1.conv_1x1.weight", "stages.0.1.bn.weight", "stages.0.1.conv_kxk.bn.weight"} <= set(qa)


def test_keys_and_shapes_equal_a_timm_checkpoint():
    ref = torch.load(shared_path("fixtures", "checkpoints", "timm_repvgg_a0.pt"), weights_only=True)["state_dict"]
    ours = create_model("repvgg_a0").state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


def test_num_classes_and_deploy_names():
    model = create_model("repvgg_a0", num_classes=10).eval()
    assert model.head.fc.out_features == 10
    deployed = reparameterize(model)
    keys = set(deployed.state_dict())
    assert {"stem.reparam_conv.weight", "stages.3.0.reparam_conv.bias", "head.fc.weight"} <= keys
    assert len(keys) == 2 * 22 + 2


@pytest.mark.parametrize("name", ["repvgg_a0", "qarepvgg_a0"])
def test_deploy_graph_is_a_plain_net(name):
    """One conv + one ReLU per block, then pool / flatten / fc: no BatchNorm, no add."""
    train = create_model(name, num_classes=10).eval()
    n_blocks = sum(count_blocks(train).values())
    assert n_blocks == 1 + sum(ARCHS["a0"].depths)
    assert _op_counts(fx.symbolic_trace(train))["add"] > 0, "sanity: the train form has branch sums"
    counts = _op_counts(fx.symbolic_trace(reparameterize(train)))
    assert counts == Counter(
        {"Conv2d": n_blocks, "ReLU": n_blocks, "AdaptiveAvgPool2d": 1, "Flatten": 1, "Linear": 1,
         "placeholder": 1, "output": 1}
    )


def _op_counts(gm: fx.GraphModule) -> Counter:
    modules = dict(gm.named_modules())
    counts: Counter = Counter()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[type(modules[node.target]).__name__] += 1
        elif node.op in ("call_function", "call_method"):
            is_add = node.target in (operator.add, operator.iadd, torch.add, "add", "add_")
            counts["add" if is_add else str(node.target)] += 1
        else:
            counts[node.op] += 1
    return counts


@pytest.mark.parametrize("block", [RepVGGBlock, QARepVGGBlock])
def test_whole_net_fuses_exactly(block):
    """A reduced-width net with the g4 layout: every block kind (stem, stride 2, identity, grouped) at once."""
    model = RepVGG(RepVGGArch((2, 2, 2, 1), (0.25, 0.25, 0.25, 0.25), groups=4), block, num_classes=7)
    if block is QARepVGGBlock:  # its raw 1x1 branch would otherwise be small next to the identity
        with torch.no_grad():
            for b in blocks(model):
                b.conv_1x1.weight.mul_(3.0)
    assert_fuses_exactly(model, torch.randn(2, 3, 32, 32))
