"""Convolutions a model executes in one forward, whatever its form (module, GraphModule, ATen graph).

Counted at the dispatcher (every ``aten.convolution`` call), so a module called twice counts twice and a
conv hidden in ``F.conv2d`` or a traced graph counts too: the number the "never more convolutions than the
source" guarantee is about.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["executed_convs"]

_CONVS = {torch.ops.aten.convolution.default, torch.ops.aten._convolution.default}


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _CONVS:
            self.n += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def executed_convs(model: nn.Module, x: Tensor) -> int:
    """How many convolutions ``model(x)`` runs."""
    with _Counter() as counter:
        model(x)
    return counter.n
