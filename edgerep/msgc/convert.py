"""MobileNetV2-MSGC training form -> deploy forms.

``to_dynamic``: the same function in eval mode (per-sample hard masks), BatchNorm folded, standard ops
only, so it exports to ONNX / TFLite / Core ML. It saves no computation: every projection still runs
over all hidden channels (masked ones multiplied by zero), because a runtime cannot skip channels
chosen at run time.

``to_static``: masks fixed offline from calibration images, so the skipped work is really skipped:
each head keeps the channels its gate selects most often (a keep ratio per head, or every channel
selected on at least a ``threshold`` fraction of the images), the projection reads only those, and
channels no head keeps are removed from the expand and depthwise convs. It is an approximation of
the dynamic form whose quality is measured, not assumed (bench/msgc_static.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import BadInputError
from ..reparam.blocks.base import deploy_conv
from ..reparam.fuse import KernelBias, fold_bn
from ..zoo.msgc import MobileNetV2MSGC, MSGCDepthwiseSeparable, MSGCInvertedResidual, _HeadsProjector
from .modules import DynamicMSGCBlock, HeadsGate, MSGCDeployNet, StaticMSGCBlock

__all__ = ["GateStats", "calibrate", "select_channels", "to_dynamic", "to_static"]

MSGCBlock = MSGCInvertedResidual | MSGCDepthwiseSeparable


@dataclass(frozen=True)
class GateStats:
    """One block's gates over the calibration images, per (head, hidden channel).

    ``frequency``: how often the channel was kept; ``mean_logit`` breaks ties between equally frequent
    channels. ``mean_gated`` / ``mean_open``: the image and spatial mean of what the channel feeds the
    head's projection when gated as the dynamic form gates it / when always kept (times the attention,
    if any) -- what the static form's bias correction needs.
    """

    frequency: Tensor  # (heads, hidden), in [0, 1]
    mean_logit: Tensor
    mean_gated: Tensor
    mean_open: Tensor
    images: int


def to_dynamic(model: MobileNetV2MSGC) -> MSGCDeployNet:
    """The eval-mode function of ``model`` (running BN statistics, hard gates) as a new deploy network."""
    blocks = []
    for b in _blocks(model):
        expand, dw, project = _folded_convs(b)
        blocks.append(DynamicMSGCBlock(
            _conv(*expand) if expand else None, _conv(*dw), _conv(*project), _gate(b.maskgen),
            _gate(b.attgen) if b.attgen is not None else None, b.heads, b.has_skip,
        ))
    return _net(model, blocks)


@torch.no_grad()
def calibrate(model: MobileNetV2MSGC, images: Tensor, batch_size: int = 32) -> list[GateStats]:
    """Run ``model`` (eval mode) on ``images`` (N, 3, H, W) and record every block's gate decisions."""
    blocks = _blocks(model)
    if images.ndim != 4 or len(images) == 0:
        raise BadInputError(
            f"calibration images must be a non-empty (N, 3, H, W) batch, got shape {tuple(images.shape)}"
        )
    sums = [torch.zeros(4, b.heads, b.maskgen.channels, dtype=torch.float64) for b in blocks]
    seen: list[dict[str, Tensor]] = [{} for _ in blocks]

    def keep(i: int, what: str):
        def hook(_module, _inputs, out: Tensor) -> None:
            seen[i][what] = out.flatten(1).double().unflatten(1, (blocks[i].heads, -1))
        return hook

    def accumulate(i: int):
        def hook(_module, _inputs, hidden: Tensor) -> None:  # the depthwise output: the projection's input
            logits, att = seen[i]["logits"], seen[i].get("att")
            mask = (logits >= 0).double()
            open_ = torch.ones_like(mask) if att is None else att
            y = hidden.double().mean((2, 3)).unsqueeze(1)  # (B, 1, hidden)
            sums[i] += torch.stack([mask.sum(0), logits.sum(0), (mask * open_ * y).sum(0), (open_ * y).sum(0)])
        return hook

    handles = []
    for i, b in enumerate(blocks):
        handles.append(b.maskgen.conv_expand.register_forward_hook(keep(i, "logits")))
        if b.attgen is not None:
            handles.append(b.attgen.register_forward_hook(keep(i, "att")))
        handles.append(_depthwise_act(b).register_forward_hook(accumulate(i)))
    was_training = model.training
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    n = len(images)
    return [GateStats(*(t / n).float(), images=n) for t in sums]


def select_channels(
    stats: list[GateStats], keep_ratio: float | None = None, threshold: float | None = None
) -> list[list[Tensor]]:
    """Per block, per head: the sorted hidden channels the static form keeps.

    ``keep_ratio``: each head keeps ``ceil(keep_ratio * hidden)`` channels, the most often selected first.
    ``threshold``: each head keeps every channel selected on at least that fraction of the images (the
    default, 0.5, is the gate's majority vote). A head left with nothing keeps its most frequent channel,
    so every output channel stays computed from data.
    """
    if keep_ratio is not None and threshold is not None:
        raise BadInputError("give keep_ratio or threshold, not both")
    if keep_ratio is None and threshold is None:
        threshold = 0.5
    if keep_ratio is not None and not 0 < keep_ratio <= 1:
        raise BadInputError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise BadInputError(f"threshold must be in [0, 1], got {threshold}")
    out = []
    for s in stats:
        heads = []
        for freq, logit in zip(s.frequency, s.mean_logit):
            # Most frequent first; among equally frequent channels, the larger mean gate logit first.
            by_logit = torch.argsort(logit, descending=True, stable=True)
            order = by_logit[torch.argsort(freq[by_logit], descending=True, stable=True)]
            if keep_ratio is not None:
                k = math.ceil(keep_ratio * len(freq))
            else:
                k = max(1, int((freq >= threshold).sum()))
            heads.append(order[:k].sort().values)
        out.append(heads)
    return out


def to_static(
    model: MobileNetV2MSGC, calibration: Tensor | list[GateStats], *, keep_ratio: float | None = None,
    threshold: float | None = None, bias_correction: bool = True,
) -> MSGCDeployNet:
    """``model`` with fixed masks chosen on ``calibration`` (images, or ``calibrate``'s statistics).

    ``bias_correction``: each projection's bias absorbs, on average over the calibration images, what
    the fixed masks add or drop compared with the per-image gates (a dropped channel's mean gated input,
    minus a kept channel's mean input on the images where its gate was closed). It is exactly zero
    where the gates never disagree with the fixed masks.
    """
    blocks = _blocks(model)
    stats = calibrate(model, calibration) if isinstance(calibration, Tensor) else calibration
    if len(stats) != len(blocks):
        raise BadInputError(f"calibration statistics cover {len(stats)} blocks; the model has {len(blocks)}")
    kept = select_channels(stats, keep_ratio, threshold)
    return _net(model, [
        _static_block(b, k, s if bias_correction else None) for b, k, s in zip(blocks, kept, stats)
    ])


def _static_block(b: MSGCBlock, kept: list[Tensor], stats: GateStats | None) -> StaticMSGCBlock:
    expand, dw, project = _folded_convs(b)
    hidden = dw[0].kernel.shape[0]
    union = torch.unique(torch.cat(kept))  # sorted: every channel some head reads
    position = torch.full((hidden,), -1, dtype=torch.long)
    position[union] = torch.arange(len(union))

    new_expand = _conv(_rows(expand[0], union), expand[1]) if expand else None
    new_dw = _conv(_rows(dw[0], union), dw[1], in_channels=len(union), groups=len(union))
    select = union if expand is None and len(union) < hidden else None

    w, bias = project[0].kernel.flatten(1), project[0].bias  # (out, hidden): head h owns rows h*o:(h+1)*o
    heads = len(kept)
    o = len(bias) // heads
    if stats is not None:
        bias = _corrected_bias(w, bias, kept, stats)
    attgen = None
    if b.attgen is not None:
        attgen = _gate(b.attgen, torch.cat([h * hidden + k for h, k in enumerate(kept)]))
    if attgen is None and all(torch.equal(k, union) for k in kept):  # every head reads every computed channel
        proj = _pointwise(w[:, union], bias, project[1])
        return StaticMSGCBlock(
            new_expand, new_dw, proj, select=select, gather=None, splits=[], attgen=None, has_skip=b.has_skip
        )
    gather = torch.cat([position[k] for k in kept])
    sizes = [len(k) for k in kept]
    parts = [w[h * o:(h + 1) * o][:, k] for h, k in enumerate(kept)]
    if len(set(sizes)) == 1:
        proj = _pointwise(torch.cat(parts), bias, project[1], groups=heads)
    else:
        proj = nn.ModuleList(_pointwise(p, bias[h * o:(h + 1) * o], project[1]) for h, p in enumerate(parts))
    return StaticMSGCBlock(
        new_expand, new_dw, proj, select=select, gather=gather, splits=sizes, attgen=attgen, has_skip=b.has_skip
    )


def _corrected_bias(w: Tensor, bias: Tensor, kept: list[Tensor], stats: GateStats) -> Tensor:
    """``bias`` plus, per head, the projection of (mean gated input - mean input of the fixed masks)."""
    fixed = torch.zeros_like(stats.mean_gated, dtype=torch.float64)
    for h, k in enumerate(kept):
        fixed[h, k] = 1.0
    delta = stats.mean_gated.double() - fixed * stats.mean_open.double()  # (heads, hidden)
    o = len(bias) // len(kept)
    shift = torch.cat([w[h * o:(h + 1) * o].double() @ delta[h] for h in range(len(kept))])
    return (bias.double() + shift).to(bias.dtype)


def _depthwise_act(b: MSGCBlock) -> nn.Module:
    """The activation after the depthwise conv: its output is what the heads' masks select from."""
    return b.act2 if isinstance(b, MSGCInvertedResidual) else b.act1


def _blocks(model: nn.Module) -> list[MSGCBlock]:
    if not isinstance(model, MobileNetV2MSGC):
        raise BadInputError(
            "expected a MobileNetV2-MSGC training-form model (edgerep.zoo mobilenetv2_msgc*),"
            f" got {type(model).__name__}"
        )
    return [b for stage in model.blocks for b in stage]


Folded = tuple[KernelBias, nn.Conv2d]  # a conv's BN-folded kernel and bias, with the conv whose geometry it keeps


def _folded_convs(b: MSGCBlock) -> tuple[Folded | None, Folded, Folded]:
    """(expand, depthwise, projection) of a block, each with its BatchNorm folded (expand: None for t = 1)."""
    if isinstance(b, MSGCInvertedResidual):
        trio = ((b.conv_pw, b.bn1), (b.conv_dw, b.bn2), (b.conv_pwl, b.bn3))
    else:
        trio = (None, (b.conv_dw, b.bn1), (b.conv_pw, b.bn2))
    return tuple(None if p is None else (fold_bn(p[0].weight, p[0].bias, p[1]), p[0]) for p in trio)


def _conv(kb: KernelBias, like: nn.Conv2d, **override) -> nn.Conv2d:
    with torch.no_grad():
        return deploy_conv(kb, like, **override)


def _rows(kb: KernelBias, rows: Tensor) -> KernelBias:
    return KernelBias(kb.kernel[rows], kb.bias[rows])


def _pointwise(weight: Tensor, bias: Tensor, like: nn.Conv2d, groups: int = 1) -> nn.Conv2d:
    """A 1x1 conv from an (out, in / groups) matrix."""
    kernel = weight.reshape(*weight.shape, 1, 1)
    return _conv(KernelBias(kernel, bias), like, in_channels=weight.shape[1] * groups, groups=groups)


def _gate(gen: _HeadsProjector, rows: Tensor | None = None) -> HeadsGate:
    """A mask or attention generator with its BN folded; ``rows``: keep only those outputs (static form)."""
    reduce = _conv(fold_bn(gen.conv_reduce.weight, None, gen.bn), gen.conv_reduce)
    kb = KernelBias(gen.conv_expand.weight, gen.conv_expand.bias)
    return HeadsGate(reduce, _conv(kb if rows is None else _rows(kb, rows), gen.conv_expand))


def _net(model: MobileNetV2MSGC, blocks: list[nn.Module]) -> MSGCDeployNet:
    stem = _conv(fold_bn(model.conv_stem.weight, None, model.bn1), model.conv_stem)
    head = _conv(fold_bn(model.conv_head.weight, None, model.bn2), model.conv_head)
    classifier = nn.Linear(model.classifier.in_features, model.classifier.out_features)
    classifier.load_state_dict(model.classifier.state_dict())
    net = MSGCDeployNet(stem, nn.Sequential(*blocks), head, classifier)
    return net.to(model.conv_stem.weight.dtype).eval()
