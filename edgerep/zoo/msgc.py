"""MobileNetV2-MSGC (Su et al., "Middle Spectrum Grouped Convolution"), the training form.

Each inverted residual keeps MobileNetV2's expand and depthwise steps; its projection becomes a
grouped 1x1 conv with ``heads`` groups whose input is the hidden tensor repeated once per head, each
copy multiplied by a per-sample 0/1 channel mask (optionally times an attention weight). Head ``h``
produces output channels ``[h*out/heads, (h+1)*out/heads)`` from the hidden channels its mask keeps.
The masks come from the block *input*, average-pooled: 1x1 reduce (/4) + BN + ReLU, 1x1 expand to
``heads * hidden`` logits, then a gate: ``logits >= 0`` in eval mode, a straight-through
Gumbel-sigmoid sample while training.

Parameter names are edgerep's (= timm's MobileNetV2 names plus ``maskgen`` / ``attgen``); the original
repository's ``features.N.conv.k`` keys are mapped by the ``original`` layout of the ``msgc`` family
(edgerep/checkpoints/layouts.py). Deploy forms (dynamic and static masks) are in edgerep/msgc/.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mobilenetv2 import STAGES, DepthwiseSeparable, InvertedResidual, MobileNetV2, Stage
from .registry import register_model

__all__ = ["AttGen", "MaskGen", "MobileNetV2MSGC", "MSGCDepthwiseSeparable", "MSGCInvertedResidual"]

GATE_BIAS_INIT = 2.0  # the original's config.bias: every channel starts open
GUMBEL_TEMPERATURE = 2.0 / 3.0  # the original's config.eps


class _HeadsProjector(nn.Module):
    """Pooled input -> 1x1 reduce + BN + ReLU -> 1x1 expand to ``heads * channels`` values, head-major."""

    def __init__(self, in_channels: int, channels: int, heads: int, squeeze: int = 4) -> None:
        super().__init__()
        reduced = in_channels // squeeze
        if reduced < 1:
            raise ValueError(f"mask generator input has {in_channels} channels; at least {squeeze} are needed")
        self.channels, self.heads = channels, heads
        self.conv_reduce = nn.Conv2d(in_channels, reduced, 1, bias=False)
        self.bn = nn.BatchNorm2d(reduced)
        self.act = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, heads * channels, 1)

    def logits(self, pooled: Tensor) -> Tensor:
        """``(B, heads * channels, 1, 1)``: index ``h * channels + c`` is head ``h``, hidden channel ``c``."""
        return self.conv_expand(self.act(self.bn(self.conv_reduce(pooled))))


class MaskGen(_HeadsProjector):
    """Per-sample, per-head 0/1 masks over the hidden channels."""

    def __init__(self, in_channels: int, channels: int, heads: int, squeeze: int = 4) -> None:
        super().__init__(in_channels, channels, heads, squeeze)
        nn.init.constant_(self.conv_expand.bias, GATE_BIAS_INIT)

    def forward(self, pooled: Tensor) -> Tensor:
        logits = self.logits(pooled)
        if not self.training:
            return (logits >= 0).to(logits.dtype)
        # Straight-through Gumbel-sigmoid: the hard 0/1 value forward, the soft sample's gradient backward.
        u = torch.rand_like(logits)
        noise = torch.log(u + 1e-8) - torch.log(1 - u + 1e-8)
        soft = torch.sigmoid((logits + noise) / GUMBEL_TEMPERATURE)
        return ((soft >= 0.5).to(soft.dtype) - soft).detach() + soft


class AttGen(_HeadsProjector):
    """Per-sample, per-head real-valued weights of the hidden channels (starts at exactly 1)."""

    def __init__(self, in_channels: int, channels: int, heads: int, squeeze: int = 4) -> None:
        super().__init__(in_channels, channels, heads, squeeze)
        nn.init.zeros_(self.conv_expand.weight)
        nn.init.ones_(self.conv_expand.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.logits(pooled)


class _MSGCGating:
    """What both MSGC blocks add to their MobileNetV2 block: the gate and the gated grouped projection."""

    heads: int
    maskgen: MaskGen
    attgen: AttGen | None

    def _init_gating(self, in_channels: int, hidden: int, out_channels: int, heads: int, attention: bool) -> nn.Conv2d:
        if heads < 1 or out_channels % heads:
            raise ValueError(f"heads={heads} must divide the block's {out_channels} output channels")
        self.heads = heads
        self.maskgen = MaskGen(in_channels, hidden, heads)
        self.attgen = AttGen(in_channels, hidden, heads) if attention else None
        return nn.Conv2d(heads * hidden, out_channels, 1, groups=heads, bias=False)

    def gate(self, x: Tensor) -> Tensor:
        """``(B, heads * hidden, 1, 1)``: the mask (times the attention) each head applies to the hidden tensor."""
        pooled = F.adaptive_avg_pool2d(x, 1)
        g = self.maskgen(pooled)
        return g if self.attgen is None else g * self.attgen(pooled)

    def gated(self, hidden: Tensor, gate: Tensor) -> Tensor:
        """The projection's input: one masked copy of ``hidden`` per head, concatenated."""
        return hidden.repeat(1, self.heads, 1, 1) * gate


class MSGCDepthwiseSeparable(_MSGCGating, DepthwiseSeparable):
    """The t = 1 block: depthwise + BN + act, then the gated grouped projection ``conv_pw`` + BN."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, heads: int = 4, attention: bool = False,
        act_layer: Callable[[], nn.Module] = nn.ReLU6,
    ) -> None:
        DepthwiseSeparable.__init__(self, in_channels, out_channels, stride, act_layer=act_layer)
        self.conv_pw = self._init_gating(in_channels, in_channels, out_channels, heads, attention)

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x)
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.gated(y, g)))
        return y + x if self.has_skip else y


class MSGCInvertedResidual(_MSGCGating, InvertedResidual):
    """Expand + depthwise as in MobileNetV2, then the gated grouped projection ``conv_pwl`` + BN."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: int = 6, heads: int = 4,
        attention: bool = False, act_layer: Callable[[], nn.Module] = nn.ReLU6,
    ) -> None:
        InvertedResidual.__init__(self, in_channels, out_channels, stride, expand_ratio, act_layer=act_layer)
        self.conv_pwl = self._init_gating(in_channels, in_channels * expand_ratio, out_channels, heads, attention)

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x)
        y = self.project(self.gated(self.depthwise(self.expand(x)), g))
        return y + x if self.has_skip else y


class MobileNetV2MSGC(MobileNetV2):
    """MobileNetV2 whose every block (t = 1 included) is an MSGC block; stem, head and classifier unchanged."""

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, stages: tuple[Stage, ...] = STAGES,
        stem_channels: int = 32, num_features: int = 1280, heads: int = 4, attention: bool = False,
    ) -> None:
        super().__init__(num_classes, in_chans, stages, stem_channels, num_features)
        self.heads, self.attention = heads, attention
        prev = stem_channels
        stage_blocks: list[nn.Module] = []
        for st in stages:  # the same table as MobileNetV2's, built with the MSGC blocks instead
            layers: list[nn.Module] = []
            for i in range(st.n):
                stride = st.s if i == 0 else 1
                if st.t == 1:
                    layers.append(MSGCDepthwiseSeparable(prev, st.c, stride, heads, attention))
                else:
                    layers.append(MSGCInvertedResidual(prev, st.c, stride, st.t, heads, attention))
                prev = st.c
            stage_blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stage_blocks)


@register_model("msgc")
def mobilenetv2_msgc(num_classes: int = 1000, heads: int = 4, **kwargs) -> MobileNetV2MSGC:
    """The original's ``msgc_mobilenetv2(heads, attention=False, data=imagenet)``."""
    return MobileNetV2MSGC(num_classes=num_classes, heads=heads, attention=False, **kwargs)


@register_model("msgc")
def mobilenetv2_msgc_att(num_classes: int = 1000, heads: int = 4, **kwargs) -> MobileNetV2MSGC:
    """The original's ``msgc_mobilenetv2(heads, attention=True, data=imagenet)``."""
    return MobileNetV2MSGC(num_classes=num_classes, heads=heads, attention=True, **kwargs)
