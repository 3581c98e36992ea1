"""ONNX backend: torch.onnx.export to one self-contained file, onnxslim, then fp16 or static int8; run with onnxruntime.

Choices (measured, see shared/notes/dependencies.md):
- One file, no external data: phones and app bundles want a single asset. Models too large for one
  protobuf (2 GB) are out of scope for edge targets anyway.
- The graph has a fixed batch (the request's input shape): mobile runtimes plan memory for it and the
  graph simplifies further. ``run`` feeds larger inputs batch by batch.
- fp16 keeps float32 I/O (Cast nodes at the edges): callers feed the same preprocessed float32 tensor to
  every precision, the weights still halve, and the compute is fp16 on runtimes that have fp16 kernels.
- int8 is static QDQ with symmetric per-channel int8 weights and calibrated int8 activations. The tool
  defaults (per-tensor weights) collapse fused re-param nets to one class, and dynamic quantization turns
  convs into ConvInteger that runs ~10x slower than fp32 on CPU; neither is ever emitted. Before export the
  deploy model goes through ``edgerep.quant.prepare`` (equalization, bias correction, AdaRound, layers kept
  in float by name or by ``int8_budget``, each kept only if held-out calibration images agree; target options).
- Activations are u8 (asymmetric; the same 256 levels as s8): the pairing onnxruntime's x86 kernels are written
  for. s8 activations made RepGhostNet-1.0x int8 0.54x the speed of fp32 and u8 0.95x; MobileNetV2 1.36x vs 2.42x;
  RepVGG-A0 / MobileOne-S0 equal (``bench/int8_speed.py``, bench/results/int8_speed.json).
- ``reduce_range``: onnxruntime's x86 int8 kernels multiply u8 x s8 pairs with VPMADDUBSW, whose int16
  sums saturate on CPUs without VNNI (AVX2, most AVX-512); 7-bit weights cannot saturate. Measured here
  (AVX2 AMD EPYC): a random-weight repghostnet_100 had top-1 agreement 1.0 with the QDQ model run unfused
  (exact int8 semantics) and 0.0 through the fused kernels. 7-bit weights cost precision where nothing
  saturates, so ``auto`` (default) builds both and keeps the one whose onnxruntime output is closer to
  PyTorch on the calibration images (mean cosine, recorded in the manifest). ARM phones never saturate:
  ``reduce_range=false`` keeps 8 bits regardless.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BadInputError, require
from ..proof.numerics import closeness
from ..quant import calibration, check_calibration, from_options
from .base import ExportInfo, ExportRequest, InputSpec, explained

AUTO_IMAGES = 64  # calibration images on which reduce_range=auto compares 8-bit and 7-bit weights
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# How torch.onnx names the op it cannot export: TorchScript exporter, then the dynamo exporter's dispatch
# summary, then its "Error when translating node ... target=torch.ops.aten.x.default".
_OP_PATTERNS = (r"the operator '([\w:.]+)'", r"OpOverload\(op='([\w.]+)'", r"target=torch\.ops\.([\w.]+)")

# Import now so a missing package is reported when the backend is chosen, not halfway through an export.
onnx = require("onnx", "onnx")
ort = require("onnxruntime", "onnx")


class OnnxBackend:
    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "fp16", "int8")
    layouts = ("nchw",)

    def export(self, model: nn.Module, request: ExportRequest, path: Path) -> ExportInfo:
        """Write ``model`` as an ONNX file at ``path`` in the requested precision."""
        if request.layout != "nchw":
            raise BadInputError(f"the onnx target takes NCHW input only, not {request.layout}")
        opts = request.options
        record: dict = {}
        if request.precision == "int8":
            check_calibration(request.calibration, request.input_shape, "onnx")
            model, record = from_options(model, request.calibration, opts,
                                         weight_bits=7 if opts.get("reduce_range", "auto") is True else 8)
        with tempfile.TemporaryDirectory(prefix="edgerep-onnx-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            opset, exporter = int(opts.get("opset", 18)), opts.get("exporter", "dynamo")
            _export_or_explain(model, request.input_shape, fp32, opset, exporter)
            proto = onnx.load(str(fp32))
            if opts.get("simplify", True):
                proto = require("onnxslim", "onnx").slim(proto)
            notes: list[str] = []
            quant: dict = {}
            if request.precision == "fp32":
                onnx.save(proto, str(path))
            elif request.precision == "fp16":
                from onnxruntime.transformers.float16 import convert_float_to_float16

                onnx.save(_toposort(convert_float_to_float16(proto, keep_io_types=True)), str(path))
                notes.append("fp16 weights and compute, float32 input and output")
            elif request.precision == "int8":
                onnx.save(proto, str(fp32))
                quant = _quantize_int8(fp32, path, request, Path(tmp), record, model)
        onnx.checker.check_model(str(path), full_check=True)
        if quant:
            quant["input"] = _input_qparams(onnx.load(str(path)))
        return ExportInfo(INPUT_NAME, OUTPUT_NAME, "float32", quant, notes)

    def input_spec(self, path: Path) -> InputSpec:
        inp = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
        return InputSpec(tuple(s if isinstance(s, int) and s > 0 else -1 for s in inp.shape), "nchw")

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the artifact with onnxruntime (CPU) on NCHW float32 inputs, batch by batch."""
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else len(inputs)
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        outs = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            n = len(chunk)
            if n < batch:  # the graph has a fixed batch: pad the last chunk, drop the padding's outputs
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
            outs.append(session.run(None, {inp.name: chunk})[0][:n])
        return np.concatenate(outs).astype(np.float32, copy=False)


def _export_or_explain(model: nn.Module, shape: tuple[int, ...], path: Path, opset: int, exporter: str) -> None:
    """``_torch_export``; an exporter failure becomes one line naming the layer and op it could not export."""
    other = "torchscript" if exporter == "dynamo" else "dynamo"
    with explained("onnx", f"torch.onnx.export ({exporter} exporter, opset {opset})", _OP_PATTERNS, model,
                   torch.zeros(shape), f"replace or remove the layer, try --option exporter={other} or a higher"
                   " --option opset, or export to another target"):
        _torch_export(model, shape, path, opset, exporter)


def _torch_export(model: nn.Module, shape: tuple[int, ...], path: Path, opset: int, exporter: str) -> None:
    """torch.onnx.export into one file, quietly (the exporter prints progress and torchvision notices)."""
    example = (torch.zeros(shape),)
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if exporter == "dynamo":
        require("onnxscript", "onnx")  # the dynamo exporter builds its graph with onnxscript
        kwargs.update(dynamo=True, external_data=False, verbose=False, optimize=True)
    else:
        kwargs.update(dynamo=False, do_constant_folding=True)
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            torch.onnx.export(model.eval(), example, str(path), **kwargs)
    finally:
        logger.setLevel(level)
    if not path.exists():  # defensive: an exporter that "succeeds" without a file must not pass silently
        raise RuntimeError(f"torch.onnx.export wrote no file at {path}")


def _quantize_int8(fp32: Path, out: Path, request: ExportRequest, tmp: Path, record: dict, model: nn.Module) -> dict:
    """Static QDQ int8: symmetric per-channel s8 weights, u8 (option activation_type) activations, calibrated ranges."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    opts = request.options
    method = opts.get("calibrate_method", "minmax")
    choice = opts.get("reduce_range", "auto")
    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    keep = _nodes_of(onnx.load(str(prepared)), record.get("keep_fp", []))

    def build(reduce_range: bool, dest: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_static(
                str(prepared),
                str(dest),
                _CalibrationReader(request.calibration, request.input_shape[0]),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8 if opts.get("activation_type", "u8") == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibration.onnx_method(method),
                nodes_to_exclude=keep,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        if opts.get("float_output", True):
            onnx.save(float_output(onnx.load(str(dest))), str(dest))

    reduce_range = choice is True
    build(reduce_range, out)
    if choice == "auto":
        images = request.calibration[:AUTO_IMAGES].float()
        with torch.no_grad():
            ref = model(images).reshape(len(images), -1).double().numpy()
        alt = tmp / "reduce_range.onnx"
        build(True, alt)
        scores = {bits: closeness(ref, BACKEND.run(p, images.numpy())).cosine for bits, p in ((8, out), (7, alt))}
        record["auto_cosine_by_weight_bits"] = scores
        if scores[7] > scores[8]:
            reduce_range = True
            out.write_bytes(alt.read_bytes())  # ``out`` is the caller's staging path, maybe on another filesystem
    return {
        "scheme": "qdq-per-channel",
        "format": "QDQ",
        "weights": f"int8, symmetric, per output channel{', 7-bit range (reduce_range)' if reduce_range else ''}",
        "activations": f"{opts.get('activation_type', 'u8')}, asymmetric, per tensor",
        "calibrate_method": method,
        "calibration_images": int(len(request.calibration)),
        "transforms": record,
        "float_nodes": keep,
    }


def float_output(proto):
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of each graph output: float logits, same names.

    Rounding logits to int8 costs accuracy and saves nothing (see the tflite backend's ``_float_output``).
    """
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        dq = producer.get(out.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = producer.get(q.input[0])
        if source is None or sum(q.input[0] in n.input for n in graph.node) > 1:
            continue  # the float tensor feeds something else too (or is a graph input): leave the pair
        source.output[list(source.output).index(q.input[0])] = out.name
        graph.node.remove(q)
        graph.node.remove(dq)
    return proto


def _nodes_of(proto, layers: list[str]) -> list[str]:
    """The ONNX nodes of the PyTorch layers ``layers``: found by their weight, which keeps the module's name."""
    if not layers:
        return []
    by_weight = {n.input[1]: n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                 and len(n.input) > 1}
    nodes = []
    for layer in layers:
        name = by_weight.get(f"{layer}.weight")
        if name is None:
            raise BadInputError(
                f"keep_fp: cannot find the ONNX node of layer {layer} (its weight {layer}.weight was renamed"
                " by the exporter); try --option exporter=torchscript"
            )
        nodes.append(name)
    return nodes


def _toposort(proto):
    """Order nodes so each comes after its inputs' producers (the fp16 converter appends its I/O Casts last)."""
    graph = proto.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        remaining = [n for n in pending if not all(i in ready for i in n.input)]
        if len(remaining) == len(pending):
            raise RuntimeError(f"ONNX graph has a cycle or a dangling input at node {pending[0].name}")
        for n in pending:
            if n not in remaining:
                ordered.append(n)
                ready.update(n.output)
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)
    return proto


class _CalibrationReader:
    """Feeds calibration images to onnxruntime one graph batch at a time (its CalibrationDataReader protocol)."""

    def __init__(self, images: Tensor, batch: int) -> None:
        x = images.detach().float().cpu().numpy()
        usable = len(x) - len(x) % batch
        self._batches = iter([{INPUT_NAME: x[i : i + batch]} for i in range(0, usable, batch)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def _input_qparams(proto) -> dict:
    """Scale and zero point with which the int8 graph quantizes its input (for on-device pre-quantization)."""
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == INPUT_NAME:
            scale = onnx.numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
            has_zp = len(node.input) > 2 and node.input[2] in inits
            zp = onnx.numpy_helper.to_array(inits[node.input[2]]) if has_zp else None
            if scale is not None:
                return {
                    "scale": float(scale.reshape(-1)[0]),
                    "zero_point": int(zp.reshape(-1)[0]) if zp is not None else 0,
                    "dtype": str(zp.dtype) if zp is not None else "uint8",
                }
    return {}


BACKEND = OnnxBackend()
