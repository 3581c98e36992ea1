"""ResRep (Ding et al., 2021): channel pruning by re-parameterization, with a 1x1 "compactor".

Training form: ``consumer(act(compactor(bn(conv(x)))))``. The compactor starts as the identity (so a trained
model can be wrapped without changing its function). ResRep's training, which is not part of this
module, drives some compactor rows to zero with a lasso penalty plus gradient resetting. A zero row
gives a zero channel, ``act`` keeps it at zero, and the consumer (the next conv) then reads it for
nothing. So the deploy form has conv+BN+compactor merged into one conv without those rows, and the
consumer without the matching input channels.

Why one module owns the producer AND the consumer (``ResRepPair``): pruning changes both, and the
generic walker ``edgerep.reparam.reparameterize`` then gives the pruned network in one step, with no
table naming each layer's successors (the original repository needs a hand-written one). Chains where
a conv is both pruned and the consumer of a pruned conv (a bottleneck's conv1 -> conv2 -> conv3)
nest: ``ResRepPair(conv1, bn1, ResRepPair(conv2, bn2, conv3))``. The walker fuses the inner
pair first, and the outer one then trims the inner deploy conv's inputs.

Limits (refused at construction): the pruned conv and the consumer's input conv must have
``groups == 1``, because a compactor mixes channels across groups and removing one channel of a
grouped consumer would also remove its output. ``act`` must map 0 to 0 and work channel by channel
(an activation, pooling, dropout, or a ``nn.Sequential`` of them).
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..fuse import KernelBias, fold_bn, identity_kernel
from .base import FusedConv, ReparamBlock, deploy_conv, is_identity

__all__ = ["ResRepPair"]

log = logging.getLogger(__name__)


class ResRepPair(ReparamBlock):
    """``consumer(act(compactor(bn(conv(x)))))``; deploy: a pruned merged conv, ``act``, a trimmed consumer.

    ``consumer`` is the module that reads the pruned channels: a ``nn.Conv2d``, a ``nn.Sequential`` that
    starts with one (e.g. ``ConvBN``), or another ``ResRepPair``. ``threshold``: rows of the compactor
    whose L2 norm is ``<= threshold`` are removed at fuse time. The default 0 removes only exactly zero
    rows, so the deploy form stays exact. A larger value prunes more and changes the function a little
    (see ``removed_channels``). ``threshold_rule="<"`` is the original repository's rule instead: rows with
    norm ``< threshold`` go, so threshold 0 prunes nothing, not even exactly zero rows. ``act`` defaults to
    ReLU, as in ResRep's ResNets; pass ``nn.Identity()`` for none.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        consumer: nn.Module,
        act: nn.Module | None = None,
        threshold: float = 0.0,
        threshold_rule: str = "<=",
    ) -> None:
        super().__init__()
        channels = conv.out_channels
        if conv.groups != 1:
            raise ValueError(f"ResRep needs groups=1 for the pruned conv (a compactor mixes groups), got {conv.groups}")
        if bn.num_features != channels:
            raise ValueError(f"BatchNorm has {bn.num_features} channels, the conv gives {channels}")
        reader = _input_conv(consumer)
        if reader.groups != 1 or reader.in_channels != channels:
            raise ValueError(
                f"the consumer must read the {channels} channels with groups=1, "
                f"it reads {reader.in_channels} with groups={reader.groups}"
            )
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if threshold_rule not in ("<=", "<"):
            raise ValueError(f"threshold_rule must be '<=' (edgerep) or '<' (the original ResRep), got {threshold_rule!r}")
        act = act if act is not None else nn.ReLU()
        with torch.no_grad():
            zero = torch.zeros(1, channels, 8, 8, dtype=conv.weight.dtype, device=conv.weight.device)
            if act(zero).abs().max().item() != 0:
                raise ValueError("act must map 0 to 0, or a pruned (zero) channel would still reach the consumer")
        self.conv = conv
        self.bn = bn
        self.compactor = nn.Conv2d(channels, channels, 1, bias=False).to(conv.weight)
        with torch.no_grad():
            self.compactor.weight.copy_(identity_kernel(channels, dtype=conv.weight.dtype, device=conv.weight.device))
        self.act = act
        self.consumer = consumer
        self.threshold = threshold
        self.threshold_rule = threshold_rule

    def forward(self, x: Tensor) -> Tensor:
        return self.consumer(self.act(self.compactor(self.bn(self.conv(x)))))

    def compactor_norms(self) -> Tensor:
        """L2 norm of each compactor row (differentiable: the quantity ResRep's penalty drives to zero)."""
        return self.compactor.weight.flatten(1).norm(dim=1)

    def kept_channels(self, threshold: float | None = None) -> Tensor:
        """Indices of the channels that survive pruning. At least one is always kept, so the layer stays valid."""
        threshold = self.threshold if threshold is None else threshold
        norms = self.compactor_norms().detach()
        keep = torch.nonzero(norms > threshold if self.threshold_rule == "<=" else norms >= threshold).flatten()
        return keep if keep.numel() else norms.argmax().reshape(1)

    def removed_channels(self, threshold: float | None = None) -> int:
        """How many channels ``fuse(threshold)`` removes."""
        return self.conv.out_channels - self.kept_channels(threshold).numel()

    def get_kernel_bias(self) -> KernelBias:
        """conv + BN + compactor as one conv, BEFORE pruning (all ``conv.out_channels`` outputs)."""
        return _then_pointwise(fold_bn(self.conv.weight, self.conv.bias, self.bn), self.compactor.weight)

    def fuse(self, threshold: float | None = None) -> nn.Sequential:
        """``Sequential(conv=FusedConv(pruned conv, act), consumer=trimmed consumer)``; a nested pair is fused too."""
        keep = self.kept_channels(threshold)
        removed = self.conv.out_channels - keep.numel()
        if removed:
            log.info("ResRepPair: removed %d of %d channels", removed, self.conv.out_channels)
        kb = self.get_kernel_bias()
        conv = deploy_conv(KernelBias(kb.kernel[keep], kb.bias[keep]), self.conv)
        head = FusedConv(conv, act=None if is_identity(self.act) else self.act)
        return nn.Sequential(OrderedDict(conv=head, consumer=_drop_input_channels(self.consumer, keep)))


def _then_pointwise(kb: KernelBias, pointwise: Tensor) -> KernelBias:
    """``kb`` followed by a bias-free 1x1 conv ``pointwise`` (out x in x 1 x 1), as one conv.

    Private: ``fuse.merge_sequential`` covers only 1x1-then-kxk. This is the reverse order, which needs no
    padding care because a 1x1 conv never pads. It is a candidate for fuse.py (generalizes ``scale_kernel``).
    """
    matrix = pointwise.flatten(1)
    return KernelBias(torch.einsum("om,mihw->oihw", matrix, kb.kernel), matrix @ kb.bias)


def _input_conv(module: nn.Module) -> nn.Conv2d:
    """The conv that first reads a consumer's input (the one whose input channels are pruned)."""
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, ResRepPair):
        return module.conv
    if isinstance(module, FusedConv):
        return module.reparam_conv
    if isinstance(module, nn.Sequential) and len(module):
        return _input_conv(module[0])
    raise _unsupported(module)


def _drop_input_channels(module: nn.Module, keep: Tensor) -> nn.Module:
    """A copy of a consumer that reads only channels ``keep`` of its input (a nested pair is fused first)."""
    if isinstance(module, nn.Conv2d):
        conv = copy.deepcopy(module)
        conv.weight = nn.Parameter(module.weight.detach()[:, keep].clone())
        conv.in_channels = keep.numel()
        return conv
    if isinstance(module, FusedConv):
        return FusedConv(_drop_input_channels(module.reparam_conv, keep), module.attn, module.act)
    if isinstance(module, ResRepPair):
        return _drop_input_channels(module.fuse(), keep)
    if isinstance(module, nn.Sequential):
        out = copy.deepcopy(module)
        name, first = next(iter(module.named_children()))
        setattr(out, name, _drop_input_channels(first, keep))
        return out
    raise _unsupported(module)


def _unsupported(module: nn.Module) -> ValueError:
    return ValueError(
        f"ResRep cannot prune the input of a {type(module).__name__}: the consumer must be a Conv2d, "
        "a Sequential starting with one (e.g. ConvBN), or a ResRepPair"
    )
