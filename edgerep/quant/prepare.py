"""The model-level half of edgerep's int8 path: transforms applied to the PyTorch deploy model before a
backend quantizes it, driven by the target's options (targets/*.toml), the same for every target.

    model, record = prepare(deployed, calibration_images, equalize=True, bias_correction=True, adaround=True,
                            budget=2)

Each optional step (cross-layer equalization, bias correction, AdaRound, ``budget`` layers kept float chosen by
measured sensitivity, or ``budget="auto"``: cheap layers added one at a time while each helps) is judged on a
held-out part of the calibration images (every ``HOLD_OUT``-th one, never used to fit anything) in simulated int8
(``simulate.score``), or by the target's own int8 artifact when the backend passes ``measure`` (simulation does not
model every target's int8: Core ML's W8A8 quantizes more tensors and computes in fp16): a step that makes held-out
agreement with the float model worse is dropped and the simpler result kept, and ``record`` (the manifest's
``quantization.transforms``) says so, with the scores it was decided on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import BadInputError
from .adaround import adaround as adaround_model
from .bias_correction import correct_bias
from .equalize import equalize as equalize_model
from .equalize import fold_batchnorms
from .fakequant import RANGES
from ..proof.numerics import closeness
from .graph import NotTraceable, layer_macs, layer_order, resolve_layers
from .sensitivity import layer_sensitivity
from .simulate import Score, input_ranges, logits, score

HOLD_OUT = 4  # every 4th calibration image judges the steps
MIN_HELD_OUT = 8  # fewer held-out images cannot decide anything: every step is then applied as asked
AUTO = "auto"
# budget="auto" keeps at most AUTO_MAX_LAYERS layers float, holding at most AUTO_MAC_SHARE of the model's MACs: a
# float layer costs about 2-4x its int8 time (int8 speed-ups measured in bench/results/int8_speedup_families.json),
# so the int8 model gets at most ~10% slower for the accuracy it buys.
AUTO_MAX_LAYERS = 3
AUTO_MAC_SHARE = 0.05
AUTO_RANKING_IMAGES = 32  # only orders the candidates (ties broken by KL); the held-out images decide

Measure = Callable[[nn.Module, list[str], Tensor, Tensor], Tensor]
"""``measure(model, keep_float, fit_images, held_out_images)``: the outputs on ``held_out_images`` of the target's
int8 artifact of ``model``, calibrated on ``fit_images``, with layers ``keep_float`` left in float."""


def prepare(
    model: nn.Module,
    images: Tensor,
    *,
    equalize: bool = False,
    bias_correction: bool = False,
    adaround: bool = False,
    adaround_iterations: int = 200,
    budget: int | str = 0,
    keep_fp: str | list[str] | None = None,
    weight_bits: int = 8,
    method: str = "minmax",
    measure: Measure | None = None,
) -> tuple[nn.Module, dict]:
    """``model`` (a new copy when anything changes) ready for int8, and a record of what was done and why.

    ``keep_fp`` layers (module names, or "first" / "last") are resolved here so a misspelt name fails before any
    export; ``budget`` more layers are chosen by sensitivity (``"auto"``: see ``_auto_budget``); the backend keeps
    both in float (``record["keep_fp"]``).
    ``weight_bits`` is what the backend rounds weights to (7 for ONNX ``reduce_range``). ``measure``: judge each step
    by the target's real int8 artifact instead of simulated int8 (layer sensitivity is still simulated).
    """
    model = model.eval()
    images = images.float()
    keep = resolve_layers(model, keep_fp, images[:1])
    n_layers = len(layer_order(model, images[:1]))
    if budget != AUTO and (not isinstance(budget, int) or budget < 0 or budget > n_layers - len(keep)):
        raise BadInputError(
            f"int8_budget={budget}: the model has {n_layers} conv/linear layers"
            f"{f' ({len(keep)} already in keep_fp)' if keep else ''}; use 0..{n_layers - len(keep)} or auto"
        )
    record: dict = {"keep_fp": keep}
    judge = _Judge(model, images, weight_bits, method, keep, measure)
    if judge.active:
        record["held_out_images"] = len(judge.held)
        record["judged_by"] = "the target's int8 artifact" if measure else f"simulated int8 ({method} ranges)"
    fit = judge.fit

    def step(name: str, build: Callable[[nn.Module], tuple[nn.Module, object]], key: str) -> None:
        nonlocal model
        try:
            candidate, count = build(model)
        except NotTraceable as exc:
            record[key] = 0
            record[f"{name}_skipped"] = f"torch.fx cannot trace the model ({exc})"
            return
        if judge.accept(name, candidate, keep, record):
            model = candidate
            record[key] = count

    if equalize:
        step("equalize", equalize_model, "equalized_pairs")
    elif keep or budget:  # a BatchNorm the exporter folds renames the conv's weight, by which backends find the layer
        try:
            model, _ = fold_batchnorms(model)
        except NotTraceable:
            pass
    if bias_correction:
        step("bias_correction", lambda m: correct_bias(m, fit, bits=weight_bits, skip=tuple(keep)),
             "bias_corrected_layers")
    if adaround:
        step("adaround", lambda m: adaround_model(m, fit, skip=tuple(keep), bits=weight_bits,
                                                  iterations=adaround_iterations, method=method),
             "adarounded_layers")
    if budget == AUTO:
        keep = _auto_budget(model, fit, keep, judge, record, weight_bits, method)
    elif budget:
        chosen = _most_sensitive(model, fit, budget, keep, weight_bits, method)
        if judge.accept(f"int8_budget={budget}", model, keep + chosen, record):
            keep = keep + chosen
            record["keep_fp"] = keep
            record["budget_layers"] = chosen
    return model, record


def check_calibration(images: Tensor | None, input_shape: tuple[int, ...], target: str) -> Tensor:
    """The calibration images, or a one-line ``BadInputError`` when they are missing or not the model's input size."""
    if images is None or len(images) == 0:
        raise BadInputError(f"{target} int8 needs calibration images; pass a folder of real images with --calib DIR")
    if tuple(images.shape[1:]) != tuple(input_shape[1:]):
        raise BadInputError(
            f"{target} int8: calibration images have shape {tuple(images.shape[1:])}, the model input is"
            f" {tuple(input_shape[1:])}; give photos preprocessed to the model's input size"
        )
    return images.float()


def from_options(model: nn.Module, images: Tensor, options: dict, weight_bits: int = 8,
                 measure: Measure | None = None) -> tuple[nn.Module, dict]:
    """``prepare`` driven by a target's resolved options; a target without an option gets that step off."""
    method = str(options.get("calibrate_method", "minmax"))
    return prepare(
        model, images, equalize=bool(options.get("equalize", False)),
        bias_correction=bool(options.get("bias_correction", False)), adaround=bool(options.get("adaround", False)),
        adaround_iterations=int(options.get("adaround_iterations", 200)), budget=_budget(options.get("int8_budget", 0)),
        keep_fp=options.get("keep_fp"), weight_bits=weight_bits, method=method if method in RANGES else "minmax",
        measure=measure,
    )


def _budget(value: object) -> int | str:
    return AUTO if value == AUTO else int(value)  # type: ignore[call-overload]


def _most_sensitive(model: nn.Module, images: Tensor, budget: int, keep: list[str], bits: int, method: str,
                    candidates: list[str] | None = None) -> list[str]:
    """The ``budget`` layers whose staying float gains the most simulated agreement (then cosine-free order)."""
    report = layer_sensitivity(model, images, mode="all_but", method=method, weight_bits=bits, candidates=candidates)
    return [r.layer for r in report.layers if r.layer not in keep][:budget]


def _auto_budget(model: nn.Module, fit: Tensor, keep: list[str], judge: _Judge, record: dict, bits: int,
                 method: str) -> list[str]:
    """``int8_budget=auto``: the most sensitive cheap layers, added one at a time while each makes more held-out
    images agree; stops at the first that does not (at most ``AUTO_MAX_LAYERS``, ``AUTO_MAC_SHARE`` of the MACs).

    Returns the new ``keep`` list; ``record`` gets the layers, their MAC share and every score it was decided on.
    """
    if not judge.active:
        record["budget_auto"] = f"not applied: fewer than {MIN_HELD_OUT * HOLD_OUT} calibration images to decide on"
        return keep
    if judge.best.agreement == 1.0:
        record["budget_auto"] = "not needed: every held-out image already agrees in int8"
        record["budget_layers"] = []
        return keep
    macs = layer_macs(model, fit[:1])
    total = sum(macs.values())
    cheap = [n for n, m in macs.items() if n not in keep and m <= AUTO_MAC_SHARE * total]
    ranked = _most_sensitive(model, fit[:AUTO_RANKING_IMAGES], len(cheap), keep, bits, method, cheap) if cheap else []
    chosen: list[str] = []
    spent = 0
    for layer in ranked:
        if len(chosen) == AUTO_MAX_LAYERS:
            break
        if spent + macs[layer] > AUTO_MAC_SHARE * total:
            continue
        if not judge.accept(f"int8_budget=auto +{layer}", model, keep + chosen + [layer], record, need_gain=True):
            break
        chosen.append(layer)
        spent += macs[layer]
    record["budget_layers"] = chosen
    record["budget_float_mac_share"] = round(spent / total, 4) if total else 0.0
    record["keep_fp"] = keep + chosen
    return keep + chosen


class _Judge:
    """Scores candidates on the held-out images against the original float model; keeps the best so far."""

    def __init__(self, model: nn.Module, images: Tensor, bits: int, method: str, keep: list[str],
                 measure: Measure | None = None) -> None:
        held = torch.arange(len(images)) % HOLD_OUT == HOLD_OUT - 1
        self.active = int(held.sum()) >= MIN_HELD_OUT
        self.fit, self.held = (images[~held], images[held]) if self.active else (images, images[:0])
        self.bits, self.method, self.measure = bits, method, measure
        self._ranged: tuple[nn.Module, dict] | None = None  # the last scored model and its activation ranges
        self._start = (model, keep)
        self._best: Score | None = None
        if self.active:
            with torch.no_grad():
                self.reference = logits(model, self.held)

    @property
    def best(self) -> Score:
        """The best score so far; the starting model is scored only when a step needs comparing (``measure`` builds
        a whole artifact per score)."""
        if self._best is None:
            self._best = self._score(*self._start)
        return self._best

    def _score(self, model: nn.Module, keep: list[str]) -> Score:
        """Ranges are measured once per model: budget candidates differ only in the layers they keep float."""
        if self.measure is not None:
            near = closeness(self.reference, self.measure(model, keep, self.fit, self.held))
            return Score(near.top1, near.cosine)
        if self._ranged is None or self._ranged[0] is not model:
            names = layer_order(model, self.held[:1].float())
            self._ranged = (model, input_ranges(model.eval(), names, self.fit, self.method))
        return score(model, self.fit, self.held, skip=tuple(keep), method=self.method, bits=self.bits,
                     reference=self.reference, ranges=self._ranged[1])

    def accept(self, name: str, candidate: nn.Module, keep: list[str], record: dict, need_gain: bool = False) -> bool:
        """Keep ``candidate`` unless it scores worse on the held-out images (``need_gain``: unless more agree)."""
        if not self.active:
            return True
        scores = record.setdefault("held_out_int8", {"start": self.best.to_dict()})
        new = self._score(candidate, keep)
        scores[name] = new.to_dict()
        if need_gain and new.agreement <= self.best.agreement:
            record.setdefault("dropped", []).append(
                f"{name}: held-out agreement {new.agreement:.4f} is no better than {self.best.agreement:.4f}"
                " without it (not kept float)"
            )
            return False
        if self.best.better_than(new):
            record.setdefault("dropped", []).append(
                f"{name}: held-out agreement {new.agreement:.4f} / cosine {new.cosine:.5f} is worse than"
                f" {self.best.agreement:.4f} / {self.best.cosine:.5f} without it (simpler result kept)"
            )
            return False
        self._best = new
        return True
