"""RepVGG (Ding et al., 2021) and QARepVGG (Chu et al., 2022): plain VGG-style nets of re-param blocks.

Variants are data (``ARCHS``); factories are thin. Parameter names equal timm's byobnet layout
(``stem.conv_kxk.conv.weight``, ``stages.0.1.identity.weight``, ``head.fc.weight``; deploy form
``stages.0.0.reparam_conv.weight``), so timm checkpoints load with no renaming. QARepVGG is not in
timm; it uses the same layout with its own block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from ..reparam.blocks.qarepvgg import QARepVGGBlock
from ..reparam.blocks.repvgg import RepVGGBlock
from .layers import ClassifierHead
from .registry import register_model

BASE_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class RepVGGArch:
    """Blocks per stage, width multipliers of ``BASE_WIDTHS``, and the g2/g4 group count.

    ``groups`` applies to every second block of each stage (index 1, 3, ...): the paper's layers
    2, 4, ..., 26 counted over the whole net, which is the same set since all stage depths are even.
    """

    depths: tuple[int, int, int, int]
    widths: tuple[float, float, float, float]
    groups: int = 1

    @property
    def stem_channels(self) -> int:
        return min(64, int(64 * self.widths[0]))

    @property
    def stage_channels(self) -> list[int]:
        return [int(base * w) for base, w in zip(BASE_WIDTHS, self.widths)]

    def block_groups(self, index: int) -> int:
        return self.groups if index % 2 == 1 else 1


_A = (2, 4, 14, 1)
_B = (4, 6, 16, 1)
ARCHS: dict[str, RepVGGArch] = {
    "a0": RepVGGArch(_A, (0.75, 0.75, 0.75, 2.5)),
    "a1": RepVGGArch(_A, (1, 1, 1, 2.5)),
    "a2": RepVGGArch(_A, (1.5, 1.5, 1.5, 2.75)),
    "b0": RepVGGArch(_B, (1, 1, 1, 2.5)),
    "b1": RepVGGArch(_B, (2, 2, 2, 4)),
    "b1g2": RepVGGArch(_B, (2, 2, 2, 4), groups=2),
    "b1g4": RepVGGArch(_B, (2, 2, 2, 4), groups=4),
    "b2": RepVGGArch(_B, (2.5, 2.5, 2.5, 5)),
    "b2g2": RepVGGArch(_B, (2.5, 2.5, 2.5, 5), groups=2),
    "b2g4": RepVGGArch(_B, (2.5, 2.5, 2.5, 5), groups=4),
    "b3": RepVGGArch(_B, (3, 3, 3, 5)),
    "b3g2": RepVGGArch(_B, (3, 3, 3, 5), groups=2),
    "b3g4": RepVGGArch(_B, (3, 3, 3, 5), groups=4),
    # Not in the paper: A0's depths at a quarter of its widths (stage 4 kept wide), ~0.9 M parameters, for
    # small inputs such as CIFAR-10 where edgerep trains and ships it as a second default model.
    "a0_narrow": RepVGGArch(_A, (0.25, 0.25, 0.25, 1.0)),
}

BlockFn = Callable[..., nn.Module]


class RepVGG(nn.Module):
    """Stem block (stride 2), four stages whose first block has stride 2, classifier head."""

    def __init__(self, arch: RepVGGArch, block: BlockFn, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = block(in_chans, arch.stem_channels, 3, stride=2)
        stages, prev = [], arch.stem_channels
        for depth, channels in zip(arch.depths, arch.stage_channels):
            blocks = []
            for i in range(depth):
                blocks.append(block(prev, channels, 3, stride=2 if i == 0 else 1, groups=arch.block_groups(i)))
                prev = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.head = ClassifierHead(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def _repvgg(variant: str, num_classes: int, **kwargs) -> RepVGG:
    return RepVGG(ARCHS[variant], RepVGGBlock, num_classes, **kwargs)


def _qarepvgg(variant: str, num_classes: int, **kwargs) -> RepVGG:
    return RepVGG(ARCHS[variant], QARepVGGBlock, num_classes, **kwargs)


@register_model("repvgg")
def repvgg_a0(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("a0", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_a1(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("a1", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_a2(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("a2", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b0(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b0", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b1(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b1", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b1g2(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b1g2", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b1g4(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b1g4", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b2(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b2", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b2g2(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b2g2", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b2g4(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b2g4", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b3(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b3", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b3g2(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b3g2", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_b3g4(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("b3g4", num_classes, **kwargs)


@register_model("repvgg")
def repvgg_a0_narrow(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _repvgg("a0_narrow", num_classes, **kwargs)


@register_model("qarepvgg")
def qarepvgg_a0(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _qarepvgg("a0", num_classes, **kwargs)


@register_model("qarepvgg")
def qarepvgg_a1(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _qarepvgg("a1", num_classes, **kwargs)


@register_model("qarepvgg")
def qarepvgg_a2(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _qarepvgg("a2", num_classes, **kwargs)


@register_model("qarepvgg")
def qarepvgg_b0(num_classes: int = 1000, **kwargs) -> RepVGG:
    return _qarepvgg("b0", num_classes, **kwargs)
