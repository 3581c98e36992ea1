"""Checkpoint layouts: how other projects name the same weights, mapped to edgerep's (= timm's) names.

A layout is data: a signature (a key pattern only that layout has) and renaming rules (regex
substitutions over keys), declared per model family. Rules describe *structure*, not one file, so
every size, the g2/g4 variants, train and deploy forms, and ``module.``-prefixed or nested state
dicts of a layout map with the same few lines. Adding a layout for a new family is one ``Layout``
entry in ``LAYOUTS``; models whose checkpoints already use timm names need none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

from torch import Tensor

from ..errors import CheckpointError
from ..zoo.mobilenetv2 import STAGES as _MOBILENETV2_STAGES
from .io import extract_state_dict

__all__ = [
    "EDGEREP_FORMAT",
    "LAYOUTS",
    "Layout",
    "Rule",
    "detect_form",
    "detect_layout",
    "form_evidence",
    "get_layout",
    "is_edgerep_file",
    "layout_names",
]

# The tag edgerep writes at the top of its own checkpoint files (the format is defined in load.py).
EDGEREP_FORMAT = "edgerep.checkpoint"

# Form markers, in edgerep naming: keys only a fused block has vs keys only a training block has.
DEPLOY_KEY = re.compile(r"(^|\.)reparam_conv\.")
TRAIN_KEY = re.compile(r"(^|\.)(conv_kxk|conv_1x1|conv_scale|identity|fusion_bn)\.")


@dataclass(frozen=True)
class Rule:
    """``re.sub(pattern, repl, key)``; ``repl`` may be a function of the match (e.g. to shift an index)."""

    pattern: str
    repl: str | Callable[[re.Match[str]], str]

    def apply(self, key: str) -> str:
        return re.sub(self.pattern, self.repl, key)


@dataclass(frozen=True)
class Layout:
    """A naming convention for a set of model families (``families=None``: every family)."""

    name: str
    source: str
    families: frozenset[str] | None = None
    signature: str | None = None
    rules: tuple[Rule, ...] = ()

    def applies_to(self, family: str | None) -> bool:
        return self.families is None or family is None or family in self.families

    def evidence(self, keys: list[str]) -> str | None:
        """The first key that marks a checkpoint as this layout (None: no signature or no match)."""
        if self.signature is None:
            return None
        return next((k for k in keys if re.search(self.signature, k)), None)

    def rename(self, sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The state dict in edgerep naming, and for each new key the checkpoint's own key."""
        out: dict[str, Tensor] = {}
        origin: dict[str, str] = {}
        for key, value in sd.items():
            new = key
            for rule in self.rules:
                new = rule.apply(new)
            if new in origin:
                raise CheckpointError(
                    f"keys {origin[new]!r} and {key!r} both map to {new!r} in the {self.name} layout;"
                    " the checkpoint mixes layouts: re-save it from one model"
                )
            out[new], origin[new] = value, key
        return out, origin


def _stage_index(m: re.Match[str]) -> str:
    return f"stages.{int(m[1]) - 1}."


_REPVGG_ORIGINAL = Layout(
    name="original",
    source="DingXiaoH/RepVGG repvgg.py (and YOLOv6-style QARepVGG blocks)",
    families=frozenset({"repvgg", "qarepvgg"}),
    signature=r"^stage0\.|(^|\.)rbr_(dense|1x1|identity|reparam)(\.|$)",
    rules=(
        Rule(r"^stage0\.", "stem."),
        Rule(r"^stage([1-9]\d*)\.", _stage_index),
        Rule(r"(^|\.)rbr_dense\.", r"\1conv_kxk."),
        Rule(r"(^|\.)rbr_1x1\.", r"\1conv_1x1."),
        Rule(r"(^|\.)rbr_identity\.", r"\1identity."),
        Rule(r"(^|\.)rbr_reparam\.", r"\1reparam_conv."),
        Rule(r"^linear\.", "head.fc."),
    ),
)


# apple/ml-mobileone mobileone.py: stage0 (the stem block), stage1..4 of (depthwise, pointwise) block pairs
# indexed like timm's, branches rbr_conv.i / rbr_scale / rbr_skip, squeeze-excite se.reduce / se.expand,
# classifier linear; the fused block's reparam_conv has timm's name already.
_MOBILEONE_ORIGINAL = Layout(
    name="original",
    source="apple/ml-mobileone mobileone.py",
    families=frozenset({"mobileone"}),
    signature=r"^stage0\.|(^|\.)rbr_(conv|scale|skip)(\.|$)",
    rules=(
        Rule(r"^stage0\.", "stem."),
        Rule(r"^stage([1-9]\d*)\.", _stage_index),
        Rule(r"(^|\.)rbr_conv\.", r"\1conv_kxk."),
        Rule(r"(^|\.)rbr_scale\.", r"\1conv_scale."),
        Rule(r"(^|\.)rbr_skip\.", r"\1identity."),
        Rule(r"(^|\.)se\.reduce\.", r"\1attn.fc1."),
        Rule(r"(^|\.)se\.expand\.", r"\1attn.fc2."),
        Rule(r"^linear\.", "head.fc."),
    ),
)


def _msgc_block_index(m: re.Match[str]) -> str:
    """``features.N`` (N = 1..17, the blocks in table order) -> ``blocks.stage.index`` of MobileNetV2's table."""
    n = int(m[1]) - 1
    for stage, st in enumerate(_MOBILENETV2_STAGES):
        if n < st.n:
            return f"blocks.{stage}.{n}."
        n -= st.n
    return m[0]  # past the table: left alone, so the loader names the key as unexpected


# The original MSGC repo (torchvision's MobileNetV2 module layout plus per-block mask/attention generators).
# features.1 is the only t = 1 block of the table: its conv.0 is the depthwise step, not an expansion.
_MSGC_HEAD = 1 + sum(st.n for st in _MOBILENETV2_STAGES)  # features.18: the 1x1 head conv after the blocks
_MSGC_ORIGINAL = Layout(
    name="original",
    source="hellozhuo/msgc models/msgc_mobilenetv2.py",
    families=frozenset({"msgc"}),
    signature=r"^features\.\d+\.(conv|maskgen|attgen)\.",
    rules=(
        Rule(r"^features\.0\.0\.", "conv_stem."),
        Rule(r"^features\.0\.1\.", "bn1."),
        Rule(rf"^features\.{_MSGC_HEAD}\.0\.", "conv_head."),
        Rule(rf"^features\.{_MSGC_HEAD}\.1\.", "bn2."),
        Rule(r"^classifier\.1\.", "classifier."),
        Rule(r"^(features\.1)\.conv\.0\.0\.", r"\1.conv_dw."),
        Rule(r"^(features\.1)\.conv\.0\.1\.", r"\1.bn1."),
        Rule(r"^(features\.1)\.conv\.1\.", r"\1.conv_pw."),
        Rule(r"^(features\.1)\.conv\.2\.", r"\1.bn2."),
        Rule(r"^(features\.\d+)\.conv\.0\.0\.", r"\1.conv_pw."),
        Rule(r"^(features\.\d+)\.conv\.0\.1\.", r"\1.bn1."),
        Rule(r"^(features\.\d+)\.conv\.1\.0\.", r"\1.conv_dw."),
        Rule(r"^(features\.\d+)\.conv\.1\.1\.", r"\1.bn2."),
        Rule(r"^(features\.\d+)\.conv\.2\.", r"\1.conv_pwl."),
        Rule(r"^(features\.\d+)\.conv\.3\.", r"\1.bn3."),
        Rule(r"\.(maskgen|attgen)\.conv\.0\.", r".\1.conv_reduce."),
        Rule(r"\.(maskgen|attgen)\.conv\.1\.", r".\1.bn."),
        Rule(r"\.(maskgen|attgen)\.conv\.3\.", r".\1.conv_expand."),
        Rule(r"^features\.(\d+)\.", _msgc_block_index),
    ),
)

# Order matters for detection: the first layout whose signature matches wins; ``timm`` is the fallback.
LAYOUTS: tuple[Layout, ...] = (
    Layout("edgerep", "files written by edgerep's save_checkpoint (timm names plus a meta dict)"),
    Layout("timm", "timm (huggingface/pytorch-image-models) state dicts; edgerep's own names"),
    _REPVGG_ORIGINAL,
    _MOBILEONE_ORIGINAL,
    _MSGC_ORIGINAL,
)


def layout_names(family: str | None = None) -> list[str]:
    return list(dict.fromkeys(lay.name for lay in LAYOUTS if lay.applies_to(family)))


def get_layout(name: str, family: str | None = None) -> Layout:
    for lay in LAYOUTS:
        if lay.name == name and lay.applies_to(family):
            return lay
    known = ", ".join(layout_names(family))
    if name in layout_names():
        raise CheckpointError(f"layout {name!r} is not defined for {family} models; use one of: {known}")
    raise CheckpointError(f"unknown checkpoint layout {name!r}; use one of: {known} (or omit it to auto-detect)")


def is_edgerep_file(obj: Mapping[str, object]) -> bool:
    return obj.get("format") == EDGEREP_FORMAT and isinstance(obj.get("meta"), dict)


def detect_layout(checkpoint: Mapping[str, object], family: str | None = None) -> str:
    """The layout of a checkpoint (a whole file's dict or a bare state dict), by its key structure."""
    if is_edgerep_file(checkpoint):
        return "edgerep"
    keys = list(extract_state_dict(dict(checkpoint)))
    for lay in LAYOUTS:
        if lay.applies_to(family) and lay.evidence(keys):
            return lay.name
    return "timm"


def form_evidence(keys: list[str]) -> tuple[str | None, str | None]:
    """``(form, key)`` from edgerep-named keys: ``deploy`` if only fused keys, ``train`` if only branch keys.

    ``(None, None)`` when there is no marker (a net without re-param blocks, or a family whose fused
    names differ): the model's own key set decides then. ``("mixed", key)`` for a half-fused file.
    """
    deploy = next((k for k in keys if DEPLOY_KEY.search(k)), None)
    train = next((k for k in keys if TRAIN_KEY.search(k)), None)
    if deploy and train:
        return "mixed", deploy
    if deploy:
        return "deploy", deploy
    if train:
        return "train", train
    return None, None


def detect_form(checkpoint: Mapping[str, object], family: str | None = None) -> str:
    """``train`` or ``deploy`` for a checkpoint of any known layout (bare state dict or whole file).

    A checkpoint with no branch or fused keys is ``train``: a net without re-param blocks is its own
    deploy form. A half-fused checkpoint raises ``CheckpointError``.
    """
    if is_edgerep_file(checkpoint):
        return str(checkpoint["meta"].get("form", "train"))
    layout = get_layout(detect_layout(checkpoint, family), family)
    renamed, origin = layout.rename(extract_state_dict(dict(checkpoint)))
    form, key = form_evidence(list(renamed))
    if form == "mixed":
        raise CheckpointError(
            f"checkpoint has both fused keys ({origin[key]}) and training-branch keys: it is half converted;"
            " convert the whole train-form checkpoint again"
        )
    return form or "train"
