"""Core ML backend: coremltools ML Program (.mlpackage) in fp32 / fp16, weight-only int8 or k-means palettes.

Choices (measured, see shared/notes/dependencies.md):
- ML Program, never the old NeuralNetwork format: it is what iOS 15+ runs natively and the only format
  ``coremltools.optimize.coreml`` compresses.
- float32 I/O for every precision (``TensorType(dtype=float32)`` on both ends): without it an fp16 program
  gets fp16 I/O and a generated output name, so callers would feed each precision differently. The output
  is always named ``output``.
- ``int8`` (W8A8) is calibrated int8 activations plus ``w8`` weights. coremltools calibrates activations
  with ``MLModel.predict`` (macOS only); edgerep takes each activation's range with its own MIL evaluator on
  the calibration images instead (any OS, the same artifact everywhere), then lets coremltools' own graph
  passes insert the ``quantize``/``dequantize`` pairs (before conv, linear, pools and add), as
  ``linear_quantize_activations`` does. Those ops exist from iOS17 on, so int8 raises the deployment target.
  Layers ``keep_fp`` / ``int8_budget`` leave in float (``edgerep.quant.prepare``) are found in the MIL program by
  their weight (coremltools' op names say nothing about torch modules); their conv / linear ops keep float weights
  and read the float tensor, not a quantize/dequantize pair: what the sensitivity measurement simulated.
  ``activations`` picks the per-tensor grid (symmetric int8, or grids with zero point / uint8 that do not waste half
  of int8 on a ReLU output); ``float_output`` leaves the logits unrounded. Defaults: targets/coreml.toml.
- ``w8`` is symmetric per-channel int8 weights (``constexpr_affine_dequantize``); ``palettize6/8`` are
  per-tensor k-means palettes; ``palettize4`` is k-means with one palette per group of 16 output channels,
  which needs iOS18 — a single 4-bit palette for a whole fused re-param kernel destroyed the model
  (cosine 0.27), so it is never emitted. Compressed programs compute in fp16 unless asked otherwise.
- ``run``: ``MLModel.predict`` on macOS; elsewhere the saved MIL program is evaluated op by op with torch
  (``mil_eval``), so artifacts are checked numerically in Linux CI too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import BadInputError, require
from ..quant import check_calibration, from_options
from ..quant.calibration import HISTOGRAM_BINS, PERCENTILE, percentile_bound
from .base import ExportInfo, ExportRequest, InputSpec, explained
from .mil_eval import MilEvaluator, load_program, op_types, program_of

INPUT_NAME = "input"
OUTPUT_NAME = "output"

# Import now so a missing package is reported when the backend is chosen, not halfway through an export.
logging.getLogger("coremltools").setLevel(logging.ERROR)  # its import warns that predict() needs macOS
ct = require("coremltools", "coreml")
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
from coremltools.converters.mil.mil.passes.helper import block_context_manager

_TARGETS = ("iOS16", "iOS17", "iOS18")
# How coremltools names a torch op it has no conversion for, or the node a torch.export'ed graph failed at.
_OP_PATTERNS = (r"convert function for op '(\w+)'", r"Unsupported fx node (\w+)", r"target=torch\.ops\.([\w.]+)")
_PALETTE_BITS = {"palettize4": 4, "palettize6": 6, "palettize8": 8}
_GROUPED_PALETTE = {4: 16}  # nbits -> output channels per palette (per_grouped_channel, iOS18+)
# Oldest deployment target a precision's ops exist on: activation quantize/dequantize (iOS17), grouped palettes.
_MIN_TARGET = {"int8": "iOS17", "palettize4": "iOS18"}
# Activation range methods (option calibrate_method) and how the manifest describes each.
_METHODS = {"minmax": "min/max",
            "percentile": f"{PERCENTILE} percentile of |x| (histogram of {HISTOGRAM_BINS} bins)"}
# coremltools' passes that turn activation ranges into quantize/dequantize pairs (linear_quantize_activations').
_ACTIVATION_PASSES = ("compression::insert_prefix_quantize_dequantize_pair",
                      "compression::insert_suffix_quantize_dequantize_pair")


class CoreMLBackend:
    name = "coreml"
    suffix = ".mlpackage"
    precisions = ("fp32", "fp16", "w8", "int8", *_PALETTE_BITS)
    layouts = ("nchw",)

    def export(self, model: nn.Module, request: ExportRequest, path: Path) -> ExportInfo:
        """Convert ``model`` to an ML Program in the requested precision and save it at ``path``."""
        precision = request.precision
        if precision == "int8":
            check_calibration(request.calibration, request.input_shape, "coreml")
        opts = request.options
        notes: list[str] = []
        target = str(opts.get("minimum_deployment_target", "iOS16"))
        nbits = _PALETTE_BITS.get(precision)
        needed = _MIN_TARGET.get(precision, target)
        if _TARGETS.index(target) < _TARGETS.index(needed):
            why = "activation quantize/dequantize ops" if precision == "int8" else "grouped palettes"
            notes.append(f"{precision}: minimum deployment target raised from {target} to {needed} ({why} need it)")
            target = needed
        compute = {"fp32": "fp32", "fp16": "fp16"}.get(precision, str(opts.get("compute_precision", "fp16")))
        if precision == "int8" and compute != "fp16":  # coremltools 9's passes then build an invalid program
            raise BadInputError("coreml int8 computes in fp16 between its quantized ops; drop --option"
                                " compute_precision=fp32 (or use --precision w8 for int8 weights with fp32 compute)")

        scheme = str(opts.get("activations", "unsigned"))  # defaults: targets/coreml.toml
        if precision == "int8" and scheme not in _ACTIVATION_MODES:
            raise BadInputError(f"coreml option activations={scheme!r} is not allowed; use one of: "
                                f"{', '.join(_ACTIVATION_MODES)}")
        method = str(opts.get("calibrate_method", "minmax"))
        source = str(opts.get("source", "trace"))
        quant: dict = {"minimum_deployment_target": target, "compute_precision": compute}
        floats: dict[str, list[str]] = {}  # torch layer -> the MIL ops left in float for it (int8 only)

        def convert(m: nn.Module):
            return _converted(m, request.input_shape, source, target, compute)

        if precision == "int8":
            float_output = bool(opts.get("float_output", True))

            def w8a8(m: nn.Module, keep: list[str], images: torch.Tensor) -> tuple[object, dict, dict]:
                """The W8A8 program of ``m`` calibrated on ``images``, layers ``keep`` float; its float ops; info."""
                mlmodel = convert(m)
                floats = _float_ops(program_of(mlmodel), m, keep)
                mlmodel, info = _quantize_activations(mlmodel, images, _names(floats), scheme, float_output, method)
                mlmodel, weights = _quantize_weights(mlmodel, _names(floats))
                return mlmodel, floats, info | weights

            def measure(m: nn.Module, keep: list[str], fit: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
                """Each prepare step is judged by the W8A8 program itself (simulated int8 misjudged Core ML)."""
                program = program_of(w8a8(m, keep, fit)[0])
                evaluator = MilEvaluator(program)
                batch = int(program.inputs[INPUT_NAME].shape[0])
                return torch.from_numpy(_batched(evaluator, batch, held.numpy(), "the candidate int8 program"))

            # the same prepared model as every target's int8 (edgerep.quant.prepare), judged by its Core ML artifact
            model, transforms = from_options(model.eval(), request.calibration, opts, measure=measure)
            mlmodel, floats, info = w8a8(model, transforms["keep_fp"], request.calibration)
            quant.update(info, transforms=transforms)
        else:
            mlmodel = convert(model)
        if precision == "w8":
            mlmodel, info = _quantize_weights(mlmodel)
            quant.update(info)
        elif nbits is not None:
            mlmodel, info = _palettize(mlmodel, nbits)
            quant.update(info)
        if floats:
            _check_float(program_of(mlmodel), _names(floats))
            quant["float_ops"] = floats
        mlmodel.save(str(path))
        counts = op_types(load_program(path))
        notes.append("MIL ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()) if k != "const"))
        return ExportInfo(INPUT_NAME, OUTPUT_NAME, "float32", quantization=quant, notes=notes)

    def input_spec(self, path: Path) -> InputSpec:
        var = next(iter(load_program(Path(path)).inputs.values()))
        return InputSpec(tuple(int(s) for s in var.shape), "nchw")

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        """Outputs for NCHW float32 ``inputs``, fed in batches of the artifact's fixed batch size."""
        if sys.platform == "darwin":
            mlmodel = ct.models.MLModel(str(path))
            batch = int(mlmodel.get_spec().description.input[0].type.multiArrayType.shape[0])
            return _batched(mlmodel.predict, batch, inputs, str(path))
        evaluator = _evaluator(Path(path))
        return _batched(evaluator, int(evaluator.function.inputs[INPUT_NAME].shape[0]), inputs, str(path))


def _batched(predict, batch: int, inputs: np.ndarray, where: str) -> np.ndarray:
    """``predict({input: x})[output]`` over NCHW float32 ``inputs`` fed in the program's fixed ``batch``."""
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if len(inputs) % batch:
        raise BadInputError(f"{where} takes batches of {batch}; got {len(inputs)} inputs")
    with torch.inference_mode(), _single_thread():
        outs = [np.asarray(predict({INPUT_NAME: inputs[i : i + batch]})[OUTPUT_NAME], dtype=np.float32)
                for i in range(0, len(inputs), batch)]
    return np.concatenate(outs)


def _converted(model: nn.Module, shape: tuple[int, ...], source: str, target: str, compute: str):
    """``_convert``, with a failure turned into one line naming the layer and op coremltools could not convert."""
    other = "export" if source == "trace" else "trace"
    with explained("coreml", f"coremltools {ct.__version__} (source={source}, {target})", _OP_PATTERNS, model,
                   torch.zeros(shape),
                   f"replace or remove the layer, try --option source={other}, or export to another target"):
        return _convert(model, shape, source, target, compute)


def _convert(model: nn.Module, shape: tuple[int, ...], source: str, target: str, compute: str):
    """coremltools conversion of a traced (or torch.export'ed) model, quietly: its progress bars are noise here."""
    example = torch.zeros(shape)
    with torch.no_grad():
        if source == "trace":
            graph = torch.jit.trace(model.eval(), example)
        elif source == "export":
            graph = torch.export.export(model.eval(), (example,)).run_decompositions({})
        else:
            raise BadInputError(f"coreml option source={source!r} is not allowed; use trace or export")
    with _quiet():
        return ct.convert(
            graph,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)],
            outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=ct.precision.FLOAT32 if compute == "fp32" else ct.precision.FLOAT16,
        )


# activations option -> coremltools mode, per tensor. iOS17 quantize / dequantize take an optional int8 or uint8
# zero_point matching output_dtype. "linear" gives each tensor a zero point, so a ReLU output [0, max] gets all 256
# levels instead of the 128 of [-max, max]; coremltools' own pass nullify_redundant_quantization_zero_point then
# stores a zero point of -128 as uint8 without one ("performance is better when zero point = 0", its docstring).
# "unsigned" is "linear" on ranges made symmetric for tensors that go negative: uint8 without zero point for
# never-negative tensors, symmetric int8 for the rest, so no zero point is left anywhere (the grids of Apple's
# training-time default, coremltools.optimize.torch: quint8, "zero point as zero for non-negative activations and
# 128 for all other activations").
_ACTIVATION_MODES = {"symmetric": "linear_symmetric", "asymmetric": "linear", "unsigned": "linear"}
_ACTIVATION_GRIDS = {"symmetric": "int8, no zero point",
                     "asymmetric": "int8 with a zero point (uint8 without one where never negative)",
                     "unsigned": "uint8 where never negative, else int8, no zero point"}


def _quantize_activations(mlmodel, calibration: torch.Tensor, floats: tuple[str, ...] = (),
                          scheme: str = "unsigned", float_output: bool = True, method: str = "minmax"):
    """int8 activations: ranges from the MIL evaluator on ``calibration``, quantize/dequantize pairs by coremltools.

    Ranges are taken over all calibration images by ``method`` (``activation_ranges``; coremltools 9's own
    calibration keeps only the last sample's range: its ``record_intermediate_output`` overwrites before it
    compares). The inputs and output of each concat share one range, as coremltools does, so a quantized concat
    needs no requantization.
    The ops named in ``floats`` get no pair of their own (``op_name_configs`` None: the prefix pass skips them),
    and ``_FloatInputs`` then feeds them past the pair the suffix pass put after the quantized op before them.
    ``scheme`` is an ``_ACTIVATION_MODES`` key; ``float_output`` removes the pair that rounds the program's output.
    """
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models.utils import _apply_graph_pass

    function = program_of(mlmodel)
    stats = activation_ranges(MilEvaluator(function), calibration, method)
    _share_concat_ranges(function, stats)
    stats = {name: _grid_range(r, scheme) for name, r in stats.items()}
    cto = ct.optimize.coreml
    op = cto.OpLinearQuantizerConfig(mode=_ACTIVATION_MODES[scheme], dtype="int8")
    config = cto.OptimizationConfig(global_config=op, op_name_configs={name: None for name in floats})
    passes = []
    for name in _ACTIVATION_PASSES:
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    if floats:
        passes.append(_FloatInputs(floats))
    if float_output:
        passes.append(_FloatOutput())
    if floats or float_output:
        passes.append(PASS_REGISTRY["common::dead_code_elimination"])
    with _quiet():
        out = _apply_graph_pass(mlmodel, passes, spec_version=ct._SPECIFICATION_VERSION_IOS_17,
                                pymil_load_func=milproto.load, skip_model_load=True)
    function = out._mil_program.functions["main"]
    quantized = sum(o.op_type == "quantize" for o in function.operations)
    output = "int8-rounded" if any(_rounding_pair(v) for v in function.outputs) else "float"
    return out, {"activations": f"{scheme}, per tensor: {_ACTIVATION_GRIDS[scheme]}",
                 "calibration_images": int(len(calibration)), "quantized_activations": quantized,
                 "calibration": f"{_METHODS[method]} over all images (edgerep MIL evaluator)", "output": output}


def _grid_range(r: dict[str, float], scheme: str) -> dict[str, float]:
    """The range coremltools derives a tensor's int8 grid from, for activations ``scheme``.

    An all-zero tensor (a dead ReLU layer) gets [0, 1]: coremltools' parameters of [0, 0] are scale 0 (and for
    "linear" a NaN zero point), which the quantize op refuses; 0 stays exact. unsigned: [0, max] stays (uint8
    after coremltools' zero-point pass); a range below 0 becomes [-128/127 m, m], m = max |value|, whose "linear"
    int8 parameters are scale m/127 and zero point 0 (coremltools computes in fp16; the exact zero point 0 is 0.5
    away from a rounding edge): the symmetric int8 grid.
    """
    if r["rmin"] == r["rmax"] == 0:
        return {"rmin": 0.0, "rmax": 1.0}
    if scheme != "unsigned" or r["rmin"] >= 0:
        return r
    m = max(-r["rmin"], r["rmax"])
    return {"rmin": -m * 128 / 127, "rmax": m}


def activation_ranges(evaluator: MilEvaluator, images: torch.Tensor,
                      method: str = "minmax") -> dict[str, dict[str, float]]:
    """``{tensor name: {"rmin", "rmax"}}`` of every float tensor the program computes, over all ``images``.

    ``method`` (a ``_METHODS`` key): ``minmax`` is the observed range; ``percentile`` clips it to the |x| that
    ``PERCENTILE`` % of a tensor's values do not exceed, from a second pass that fills a histogram of |x| over
    the first pass's range (onnxruntime's Percentile: one outlier in 10^5 values no longer sets the grid).
    Images are fed in the program's fixed batch; a last partial batch is dropped (it cannot be fed).
    """
    if method not in _METHODS:
        raise BadInputError(f"coreml option calibrate_method={method!r} is not allowed; use one of: "
                            f"{', '.join(_METHODS)}")
    stats: dict[str, dict[str, float]] = {}

    def observe(tensor: str, value: torch.Tensor) -> None:
        lo, hi = value.min().item(), value.max().item()
        seen = stats.setdefault(tensor, {"rmin": lo, "rmax": hi})
        seen["rmin"], seen["rmax"] = min(seen["rmin"], lo), max(seen["rmax"], hi)

    _observe_all(evaluator, images, observe)
    if method == "minmax":
        return stats
    top = {name: max(-r["rmin"], r["rmax"]) for name, r in stats.items()}
    histograms = {name: torch.zeros(HISTOGRAM_BINS, dtype=torch.float64) for name, t in top.items() if t > 0}

    def count(tensor: str, value: torch.Tensor) -> None:
        if tensor in histograms:
            histograms[tensor] += torch.histc(value.abs().float(), HISTOGRAM_BINS, 0, top[tensor]).double()

    _observe_all(evaluator, images, count)
    for name, histogram in histograms.items():
        bound = percentile_bound(histogram, top[name])
        stats[name] = {"rmin": max(stats[name]["rmin"], -bound), "rmax": min(stats[name]["rmax"], bound)}
    return stats


def _observe_all(evaluator: MilEvaluator, images: torch.Tensor, observe) -> None:
    """Run ``images`` through ``evaluator`` in its fixed batch, calling ``observe(name, value)`` on every
    non-empty float tensor; refuse fewer images than one batch."""
    name = evaluator.input_names[0]
    batch = int(evaluator.function.inputs[name].shape[0])
    if len(images) < batch:
        raise BadInputError(f"int8 calibration needs at least {batch} images (the model's batch); got {len(images)}")

    def floats(tensor: str, value: torch.Tensor) -> None:
        if value.is_floating_point() and value.numel():
            observe(tensor, value)

    x = images.detach().float().cpu().numpy()
    with torch.inference_mode(), _single_thread():
        for i in range(0, len(x) - len(x) % batch, batch):
            evaluator({name: x[i : i + batch]}, observe=floats)


def _share_concat_ranges(function, stats: dict[str, dict[str, float]]) -> None:
    """Give the inputs and output of every concat (transitively: tensors shared by concats) one common range."""
    group: dict[str, set[str]] = {}
    for op in function.operations:
        if op.op_type != "concat":
            continue
        members = {v.name for v in op.inputs["values"]} | {op.outputs[0].name}
        for name in list(members):
            members |= group.get(name, set())
        for name in members:
            group[name] = members
    for members in {id(m): m for m in group.values()}.values():
        known = [stats[n] for n in members if n in stats]
        if known:
            lo, hi = min(s["rmin"] for s in known), max(s["rmax"] for s in known)
            for n in members:
                if n in stats:
                    stats[n] = {"rmin": lo, "rmax": hi}


def _quantize_weights(mlmodel, floats: tuple[str, ...] = ()):
    """Symmetric per-channel int8 weights, except those of the ops named in ``floats`` (their weight const's
    config is its consumer's: ``op_name_configs`` None leaves it float)."""
    cto = ct.optimize.coreml
    op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    config = cto.OptimizationConfig(global_config=op, op_name_configs={name: None for name in floats})
    with _quiet():
        out = cto.linear_quantize_weights(mlmodel, config)
    return out, {"weights": "int8", "scheme": "linear_symmetric", "granularity": "per_channel",
                 "weight_threshold": op.weight_threshold, **_compressed(out, "constexpr_affine_dequantize")}


# The layer ops keep_fp / int8_budget leave in float: the conv / linear coremltools makes of nn.Conv2d / nn.Linear.
_LAYER_OPS = ("conv", "linear")


def _float_ops(function, model: nn.Module, layers: list[str]) -> dict[str, list[str]]:
    """The MIL ops that run each torch layer of ``layers``, found by their weight: same shape, same values to fp16.

    A layer whose weight no conv / linear op holds (coremltools folded something into it) is refused: it would
    otherwise be quantized silently. A layer matching several ops (a module called twice, or layers with
    identical weights) keeps all of them float: more float than asked, never less.
    """
    ops = [op for op in function.operations if op.op_type in _LAYER_OPS and op.inputs["weight"].val is not None]
    modules = dict(model.named_modules())
    found: dict[str, list[str]] = {}
    for layer in layers:
        weight = modules[layer].weight.detach().float().numpy()
        found[layer] = [op.name for op in ops if _same_weight(op.inputs["weight"].val, weight)]
        if not found[layer]:
            raise BadInputError(
                f"keep_fp / int8_budget: layer {layer} ({tuple(weight.shape)} weight) has no conv or linear op with"
                " that weight in the Core ML program (coremltools fused something into it); leave it out of keep_fp,"
                " lower int8_budget, or export int8 to onnx / executorch"
            )
    return found


def _same_weight(mil: np.ndarray, weight: np.ndarray) -> bool:
    """``mil`` is ``weight`` as the program stores it: fp16 keeps 11 significant bits (relative step 2**-11)."""
    if mil.shape != weight.shape:
        return False
    return bool(np.allclose(mil.astype(np.float32), weight, rtol=2e-3, atol=1e-7))


def _names(floats: dict[str, list[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for ops in floats.values() for name in ops))


class _FloatInputs(AbstractGraphPass):
    """Feed each named op the float tensor behind a ``quantize -> dequantize`` pair on its input.

    coremltools' suffix pass puts that pair after every quantized conv / add / pool, whoever reads it; a layer
    kept float reads the float tensor instead, as ``edgerep.quant.simulate`` measured it (orphaned pairs are
    then removed by dead-code elimination).
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = set(names)

    def apply(self, prog) -> None:
        for function in prog.functions.values():
            _read_float(function, self.names)


# Ops that may follow the last layer's quantize/dequantize pair on the way to an output (single input ``x``).
_AFTER_LAST_OP = ("cast", "reshape", "squeeze", "expand_dims", "transpose", "identity", "softmax")


class _FloatOutput(AbstractGraphPass):
    """Remove the ``quantize -> dequantize`` pair that rounds each program output to int8 (float logits).

    The pair's reader (the fp32 cast, a reshape...) gets the float tensor instead; dead-code elimination then
    drops the pair. A kept-float last layer has no pair after it: nothing to remove.
    """

    def apply(self, prog) -> None:
        for function in prog.functions.values():
            _unround_outputs(function)


def _pair_behind(var):
    """The ``(quantize, dequantize)`` pair that produces ``var``, else None."""
    dq = var.op
    q = dq.inputs["input"].op if dq is not None and dq.op_type == "dequantize" else None
    return (q, dq) if q is not None and q.op_type == "quantize" else None


def _rounding_pair(var):
    """The ``(quantize, dequantize)`` pair ``var`` is read from through ``_AFTER_LAST_OP`` ops only, if nothing
    else reads that dequantize; else None."""
    while var.op is not None and var.op.op_type in _AFTER_LAST_OP:
        var = var.op.inputs["x"]
    return _pair_behind(var) if len(var.child_ops) == 1 else None


@block_context_manager
def _unround_outputs(block) -> None:
    for var in block.outputs:
        pair = _rounding_pair(var)
        if pair is not None and pair[1].outputs[0] not in block.outputs:  # an fp16 output is never read raw here
            q, dq = pair
            block.try_replace_uses_of_var_after_op(anchor_op=dq, old_var=dq.outputs[0], new_var=q.inputs["input"])


@block_context_manager
def _read_float(block, names: set[str]) -> None:
    for op in list(block.operations):
        pair = _pair_behind(op.inputs["x"]) if op.name in names else None
        if pair is None:
            continue
        out = op.outputs[0].name
        x = pair[0].inputs["input"]
        new = getattr(mb, op.op_type)(**{**op.inputs, "x": x, "name": op.name, "before_op": op})
        if block.try_replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new):
            block.remove_ops([op])
            new.set_name(out)


def _check_float(function, names: tuple[str, ...]) -> None:
    """Each op in ``names`` still exists with a float const weight and no dequantize on its input."""
    ops = {op.name: op for op in function.operations}
    for name in names:
        op = ops.get(name)
        weight = op.inputs["weight"].op if op is not None else None
        x = op.inputs["x"].op if op is not None else None
        if weight is None or weight.op_type != "const" or (x is not None and x.op_type == "dequantize"):
            raise RuntimeError(f"coreml int8: op {name} was to stay float but is missing or quantized")


def _palettize(mlmodel, nbits: int):
    require("sklearn", "coreml")  # coremltools' k-means needs scikit-learn and only says so deep in a traceback
    cto = ct.optimize.coreml
    group = _GROUPED_PALETTE.get(nbits)
    if group:
        op = cto.OpPalettizerConfig(nbits=nbits, mode="kmeans", granularity="per_grouped_channel", group_size=group)
    else:
        op = cto.OpPalettizerConfig(nbits=nbits, mode="kmeans", granularity="per_tensor")
    with _quiet():
        out = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    info = {"weights": f"{nbits}-bit palette", "scheme": "kmeans", "weight_threshold": op.weight_threshold,
            "granularity": "per_grouped_channel" if group else "per_tensor",
            **_compressed(out, "constexpr_lut_to_dense")}
    if group:
        info["group_size"] = group
    return out, info


def _compressed(mlmodel, op_type: str) -> dict:
    """How many weights were compressed (small or indivisible ones stay float: coremltools skips them)."""
    ops = mlmodel._mil_program.functions["main"].operations
    return {"compressed_weights": sum(op.op_type == op_type for op in ops)}


_CACHE: dict[tuple[str, float], MilEvaluator] = {}


def _evaluator(path: Path) -> MilEvaluator:
    """One evaluator per artifact version: validation runs the same artifact on several input sets."""
    key = (str(path.resolve()), (path / "Manifest.json").stat().st_mtime if path.is_dir() else 0.0)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = MilEvaluator.from_path(path)
    return _CACHE[key]


@contextlib.contextmanager
def _single_thread():
    """Evaluate op by op on one thread: batch-1 ops are tiny; two threads on a busy 2-core host ran 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet():
    """Silence coremltools' progress bars and its 'untested torch / scikit-learn version' warnings."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


BACKEND = CoreMLBackend()
