"""Plain (not re-parameterized) layers the zoo architectures share, named like timm's.

Their attribute names are part of the checkpoint format: timm's state dicts load into our models only
because ``head.fc``, ``se.fc1`` or ``se.conv_reduce`` are spelled as timm spells them. timm has two
squeeze-excitation layouts (ByobNet's ``SEModule``, EfficientNet's ``SqueezeExcite``), so both are here.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ClassifierHead", "SEModule", "SqueezeExcite", "make_divisible"]


def make_divisible(v: float, divisor: int, round_limit: float = 0.9) -> int:
    """``v`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), as timm rounds widths.

    If rounding down lost more than ``1 - round_limit`` of ``v``, one more ``divisor`` is added;
    ``round_limit=0`` never adds it. Matching timm's rounding exactly is what makes every width, and so
    every checkpoint shape, agree.
    """
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * v else rounded


class ClassifierHead(nn.Module):
    """Global average pool, flatten, fc: timm's ByobNet ``head`` (only ``fc`` holds parameters)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.global_pool(x)))


class SEModule(nn.Module):
    """Squeeze-excitation in timm's ByobNet layout (MobileOne): ``fc1`` / ``fc2`` 1x1 convs, sigmoid gate."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 8) -> None:
        super().__init__()
        rd = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation in timm's EfficientNet layout (RepGhostNet): ``conv_reduce`` / ``conv_expand``,
    hard-sigmoid gate."""

    def __init__(self, channels: int, rd_ratio: float, rd_divisor: int = 4) -> None:
        super().__init__()
        rd = make_divisible(channels * rd_ratio, rd_divisor)
        self.conv_reduce = nn.Conv2d(channels, rd, 1)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(rd, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)
