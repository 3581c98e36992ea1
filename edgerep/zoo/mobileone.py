"""MobileOne S0-S4 in timm's ByobNet layout (``stem``, ``stages.i.j``, ``head.fc``).

Every stage is a run of (depthwise kxk, pointwise 1x1) MobileOne block pairs; the first depthwise
block of each stage has stride 2. The variants differ only in the data below: widths, the number
of kxk branches (4 for S0, whose small size needs the extra over-parameterization) and which pairs
carry squeeze-excitation (S4 only).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..reparam.blocks.mobileone import MobileOneBlock
from .layers import ClassifierHead, SEModule
from .registry import register_model

__all__ = ["MobileOne", "MobileOneCfg", "CFGS"]


@dataclass(frozen=True)
class MobileOneCfg:
    """One MobileOne variant: ``widths[i]`` output channels and ``depths[i]`` block pairs of stage i."""

    stem: int
    widths: tuple[int, int, int, int]
    num_branches: int = 1
    se_pairs: tuple[int, int, int, int] = (0, 0, 0, 0)  # the last n pairs of each stage have SE
    depths: tuple[int, int, int, int] = (2, 8, 10, 1)


CFGS = {
    "mobileone_s0": MobileOneCfg(stem=48, widths=(48, 128, 256, 1024), num_branches=4),
    "mobileone_s1": MobileOneCfg(stem=64, widths=(96, 192, 512, 1280)),
    "mobileone_s2": MobileOneCfg(stem=64, widths=(96, 256, 640, 2048)),
    "mobileone_s3": MobileOneCfg(stem=64, widths=(128, 320, 768, 2048)),
    "mobileone_s4": MobileOneCfg(stem=64, widths=(192, 448, 896, 2048), se_pairs=(0, 0, 5, 1)),
}


class MobileOne(nn.Module):
    """Stem (3x3 stride-2 MobileOne block), four stages of block pairs, classifier head."""

    def __init__(self, cfg: MobileOneCfg, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = MobileOneBlock(in_chans, cfg.stem, 3, stride=2)
        stages = []
        prev = cfg.stem
        for width, depth, n_se in zip(cfg.widths, cfg.depths, cfg.se_pairs):
            blocks: list[nn.Module] = []
            for i in range(depth):
                se = i >= depth - n_se
                blocks.append(
                    MobileOneBlock(
                        prev, prev, 3, stride=2 if i == 0 else 1, groups=prev,
                        num_branches=cfg.num_branches, attn=SEModule(prev) if se else None,
                    )
                )
                blocks.append(
                    MobileOneBlock(
                        prev, width, 1, num_branches=cfg.num_branches, attn=SEModule(width) if se else None
                    )
                )
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.head = ClassifierHead(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def _create(name: str, num_classes: int, **kwargs) -> MobileOne:
    return MobileOne(CFGS[name], num_classes=num_classes, **kwargs)


@register_model("mobileone")
def mobileone_s0(num_classes: int = 1000, **kwargs) -> MobileOne:
    return _create("mobileone_s0", num_classes, **kwargs)


@register_model("mobileone")
def mobileone_s1(num_classes: int = 1000, **kwargs) -> MobileOne:
    return _create("mobileone_s1", num_classes, **kwargs)


@register_model("mobileone")
def mobileone_s2(num_classes: int = 1000, **kwargs) -> MobileOne:
    return _create("mobileone_s2", num_classes, **kwargs)


@register_model("mobileone")
def mobileone_s3(num_classes: int = 1000, **kwargs) -> MobileOne:
    return _create("mobileone_s3", num_classes, **kwargs)


@register_model("mobileone")
def mobileone_s4(num_classes: int = 1000, **kwargs) -> MobileOne:
    return _create("mobileone_s4", num_classes, **kwargs)
