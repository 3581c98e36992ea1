"""RepGhost module (Chen et al., 2022): Ghost features by re-parameterization in feature space.

GhostNet concatenates a primary 1x1 conv's output with "cheap" depthwise features of it; the
concatenation costs memory traffic on phones. RepGhost instead *adds* the cheap depthwise conv+BN
to an identity BN of the same features (``fusion_bn``), so at deploy time the sum is one depthwise
conv with bias and no concat is left.

Only the cheap part (depthwise kxk+BN plus the identity BN) is re-parameterizable; the primary
conv+BN(+ReLU) in front of it stays as it is. Names and the deploy layout follow timm's
``RepGhostModule`` (``primary_conv.0/1``, ``fusion_bn.0``, ``cheap_operation.0/1`` -> deploy
``cheap_operation`` as a plain conv), so timm and original-repo checkpoints of either form load as is.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..fuse import KernelBias, add_branches, fold_bn
from .base import ReparamBlock, deploy_conv, identity_branch


class RepGhostModule(ReparamBlock):
    """``x1 = primary(x)``; ``y = act(BN(W_dw * x1) + BN(x1))``, with ``primary = [ReLU](BN(W_p * x))``.

    Unlike blocks that collapse to one conv, the whole module is not one conv: ``get_kernel_bias``
    returns the depthwise kernel of its re-parameterizable part (the cheap op plus ``fusion_bn``) and
    ``fuse`` returns a ``RepGhostDeploy``, primary conv then that single depthwise conv. The module
    is the ``ReparamBlock`` (not the cheap op alone) because the conversion removes ``fusion_bn``, a
    sibling of the cheap op: replacing the module is what yields timm's deploy layout.

    ``reparam_bn`` / ``reparam_identity`` are the original's options: ``fusion_bn`` holds a BN branch
    (``fusion_bn.0``, the default), a plain identity branch (no parameters; the "repid" variants), both
    (BN first, as the original orders them) or neither.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dw_size: int = 3,
        stride: int = 1,
        relu: bool = True,
        reparam_bn: bool = True,
        reparam_identity: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or dw_size % 2 == 0:
            raise ValueError(
                f"RepGhost needs odd kernel sizes (same-size outputs), got primary {kernel_size}, cheap {dw_size}"
            )
        primary: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if relu:
            primary.append(nn.ReLU())
        self.primary_conv = nn.Sequential(*primary)
        fusion = ([nn.BatchNorm2d(out_channels)] if reparam_bn else []) + ([nn.Identity()] if reparam_identity else [])
        self.fusion_bn = nn.Sequential(*fusion)
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, dw_size, 1, dw_size // 2, groups=out_channels, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary_conv(x)
        y = self.cheap_operation(x1)
        for branch in self.fusion_bn:
            y = y + branch(x1)
        return self.relu(y) if self.relu is not None else y

    def get_kernel_bias(self) -> KernelBias:
        conv, bn = self.cheap_operation
        shortcuts = [identity_branch(conv, b if isinstance(b, nn.BatchNorm2d) else None) for b in self.fusion_bn]
        return add_branches([fold_bn(conv.weight, None, bn), *shortcuts])

    def fuse(self) -> RepGhostDeploy:
        cheap = deploy_conv(self.get_kernel_bias(), self.cheap_operation[0])
        return RepGhostDeploy(self.primary_conv, cheap, self.relu)


class RepGhostDeploy(nn.Module):
    """Deploy form of ``RepGhostModule``: ``act(cheap_operation(primary_conv(x)))``, cheap op one dw conv."""

    def __init__(self, primary_conv: nn.Sequential, cheap_operation: nn.Conv2d, relu: nn.Module | None) -> None:
        super().__init__()
        self.primary_conv = primary_conv
        self.cheap_operation = cheap_operation
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        y = self.cheap_operation(self.primary_conv(x))
        return self.relu(y) if self.relu is not None else y
