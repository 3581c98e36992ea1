"""TFLite (LiteRT) backend: litert-torch converts, ai-edge-litert (XNNPACK) runs.

Choices (measured, see shared/notes/dependencies.md):
- fp32 is a plain ``litert_torch.convert`` of the deploy model (max diff ~1e-7 relative to PyTorch).
- fp16 stores the weights as float16 (ai-edge-quantizer float casting of the fp32 artifact): half the
  size, float32 I/O and compute, so it runs wherever fp32 runs.
- int8 is full-integer static PT2E with litert-torch's own quantizer (symmetric per-channel int8 weights,
  int8 activations calibrated on real images) and ``convert_pt2e(fold_quantize=False)``; the tool defaults
  (XNNPACK's PT2E config, folded quantize ops) either fail to convert or hurt fused re-param weights.
  Its input and output are int8: ``run`` quantizes/dequantizes with the tensors' own scale and zero point.
  With ``float_output`` (the default) the last layer writes float logits; litert-torch then leaves a final
  fully-connected layer float with float weights, so it gets int8 weights afterwards (dynamic range, ai-edge-quantizer):
  RepGhostNet-1.0x at 224 px, 1 thread: 3.09 -> 2.89 ms, 1.46x -> 1.56x over fp32 in one interleaved run
  (bench/results/int8_pieces_repghost.json), repghostnet_050 CIFAR-10 top-1 0.6300 -> 0.6295 on 2,000 test photos.
  Residual adds whose output feeds the next add stay float (litert-torch finds adds by a source function that
  torch.export no longer records); annotating them made every add int8 but cost accuracy (repghostnet_050:
  agreement 0.9715 -> 0.9665) for no measurable speed, so they are left as they are.
  Before export the deploy model goes through ``edgerep.quant.prepare`` (equalization, bias correction,
  AdaRound per the target options, each kept only if held-out calibration images agree); ``calibrate_method`` picks the
  activation observer.
- The artifact has a fixed batch of 1 (litert-torch exports carry a batch-1 guard), so calibration and
  ``run`` go one image at a time.
- ``layout="nhwc"`` wraps the model so the artifact takes channels-last input (no TRANSPOSE at the input,
  what Android camera pipelines produce); the input is named ``image_nhwc`` so ``run`` knows the layout
  from the file alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BadInputError, require
from ..quant import calibration, check_calibration, from_options
from .base import ExportInfo, ExportRequest, InputSpec, explained

NCHW_INPUT = "image"
NHWC_INPUT = "image_nhwc"
# How litert-torch names an op it cannot lower ("Lowering not found: aten.cummax.default"), or the node it was
# lowering when a lowering itself refused ("While executing %x : ... target=torch.ops.aten._fft_r2c.default").
_OP_PATTERNS = (r"Lowering not found: ([\w.]+)", r"target=torch\.ops\.([\w.]+)")
RUN_THREADS = 1  # validation runs beside other work on small hosts; 1 thread is the reproducible baseline

# Import now so a missing package is reported when the backend is chosen, not halfway through an export.
litert_torch = require("litert_torch", "tflite")
interpreter_lib = require("ai_edge_litert.interpreter", "tflite")


class _NamedInput(nn.Module):
    """Gives the artifact's input a meaningful name (litert-torch names inputs after the forward's arguments)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image)


class _ChannelsLast(nn.Module):
    """Takes NHWC input and permutes it for the NCHW model; the converter folds the permute into its layout."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_nhwc: Tensor) -> Tensor:
        return self.model(image_nhwc.permute(0, 3, 1, 2))


class TFLiteBackend:
    name = "tflite"
    suffix = ".tflite"
    precisions = ("fp32", "fp16", "int8")
    layouts = ("nchw", "nhwc")

    def export(self, model: nn.Module, request: ExportRequest, path: Path) -> ExportInfo:
        """Write ``model`` as a .tflite file at ``path`` in the requested precision and input layout."""
        if request.input_shape[0] != 1:
            raise BadInputError(f"the tflite target exports batch 1, got input shape {request.input_shape}")
        opts = request.options
        record: dict = {}
        model = model.eval()
        if request.precision == "int8":
            check_calibration(request.calibration, request.input_shape, "tflite")
            model, record = from_options(model, request.calibration.float(), opts)
        nhwc = request.layout == "nhwc"
        wrapped = (_ChannelsLast(model) if nhwc else _NamedInput(model)).eval()
        n, c, h, w = request.input_shape
        sample = torch.zeros((n, h, w, c) if nhwc else (n, c, h, w))
        name = NHWC_INPUT if nhwc else NCHW_INPUT
        notes = [f"{request.layout.upper()} input, batch 1"]

        with explained("tflite", "litert-torch", _OP_PATTERNS, model, torch.zeros(request.input_shape),
                       "replace or remove the layer, or export to another target (onnx, coreml)"):
            if request.precision == "int8":
                calib = request.calibration.float()
                method = opts.get("calibrate_method", "mse")
                float_output = bool(opts.get("float_output", True))
                edge = _convert_int8(wrapped, name, sample, calib.permute(0, 2, 3, 1) if nhwc else calib, method,
                                     float_output)
                notes.append("full-integer static int8 (PT2E, symmetric per-channel weights); int8 input, "
                             + ("float32 output (the last layer dequantizes)" if float_output else "int8 output"))
            else:
                edge = _convert(wrapped, name, sample)
        with tempfile.TemporaryDirectory(prefix="edgerep-tflite-") as tmp:
            fp32 = Path(tmp) / "model.tflite"
            with _quiet():
                edge.export(str(fp32))
            if request.precision == "fp16":
                path.write_bytes(_fp16_weights(fp32))
                notes.append("float16 weights, float32 input, output and compute")
            elif request.precision == "int8":
                data, float_fc = int8_weights_everywhere(fp32)
                path.write_bytes(data)
                if float_fc:
                    notes.append(f"{len(float_fc)} float fully-connected layer(s) (float output): int8 weights, "
                                 "activations quantized at run time (dynamic range)")
            else:
                path.write_bytes(fp32.read_bytes())

        interp = _interpreter(path)
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        quant = {}
        if request.precision == "int8":
            quant = {"input": _qparams(inp), "output": _qparams(out), "weights": "int8 symmetric per-channel",
                     "calibrate_method": opts.get("calibrate_method", "mse"), "transforms": record}
        return ExportInfo(inp["name"], out["name"], np.dtype(inp["dtype"]).name, quant, notes)

    def input_spec(self, path: Path) -> InputSpec:
        inp = _interpreter(path).get_input_details()[0]
        return InputSpec(tuple(int(s) for s in inp["shape"]), "nhwc" if NHWC_INPUT in inp["name"] else "nchw")

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the artifact (XNNPACK, one image at a time) on NCHW float32 inputs; float32 outputs."""
        x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 4:
            raise BadInputError(f"tflite run takes NCHW inputs (N, C, H, W), got shape {x.shape}")
        interp = _interpreter(path)
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        if NHWC_INPUT in inp["name"]:
            x = x.transpose(0, 2, 3, 1)
        if tuple(inp["shape"][1:]) != x.shape[1:]:
            raise BadInputError(f"{path.name} takes input {tuple(inp['shape'])}, got images of shape {x.shape}")
        outs = []
        for i in range(len(x)):
            interp.set_tensor(inp["index"], to_input(x[i : i + 1], inp))
            interp.invoke()
            outs.append(_from_output(interp.get_tensor(out["index"]), out))
        return np.concatenate(outs)


BACKEND = TFLiteBackend()


def _convert(module: nn.Module, name: str, sample: Tensor, **kwargs):
    with _quiet():
        return litert_torch.convert(module, sample_kwargs={name: sample}, **kwargs)


def _convert_int8(module: nn.Module, name: str, sample: Tensor, images: Tensor, method: str, float_output: bool):
    """PT2E full-integer int8: export, observe activations on every calibration image, convert, lower.

    ``method`` names the activation observer (``edgerep.quant.calibration``). No layer can stay float:
    litert-torch 0.10's quantizer refuses a ``None`` module config ("quantization_config == None is not
    supported yet"), so this target has no ``keep_fp`` option.
    """
    graph, quant_config = pt2e_int8(module, name, sample, images, method, float_output)
    return _convert(graph, name, sample, quant_config=quant_config)


def pt2e_int8(module: nn.Module, name: str, sample: Tensor, images: Tensor, method: str, float_output: bool):
    """(quantized graph, litert-torch QuantConfig) of ``module`` (input keyword ``name``): what ``_convert_int8``
    converts; the kernel suite converts many of them in one litert-torch call."""
    require("torchao", "tflite")  # PT2E lives in torchao; without it the import below is a bare traceback
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(calibration.tflite_config(method))
    graph = torch.export.export(module, (), {name: sample}).module()
    graph = move_exported_model_to_eval(prepare_pt2e(graph, quantizer))
    with torch.no_grad():
        for i in range(len(images)):  # batch-1 guard in the exported graph
            graph(**{name: images[i : i + 1]})
    # fold_quantize=True leaves per-channel dequantize ops the converter cannot lower for some models.
    graph = convert_pt2e(graph, fold_quantize=False)
    if float_output:
        _float_output(graph)
    # The graph already has eval semantics (exported from an eval model); exported graphs refuse .eval(), so
    # clear the flag directly, which only silences the converter's "converted in training mode" warning.
    for sub in graph.modules():
        sub.training = False
    return graph, QuantConfig(pt2e_quantizer=quantizer)


def _float_output(graph) -> None:
    """Drop the quantize / dequantize pair on each graph output: the last layer then writes float logits.

    Rounding logits to int8 costs accuracy and saves nothing (one tensor per image); with many classes and small
    margins it alone flips top-1 (a 1000-class RepVGG-A0: median top-1 margin 0.056, int8 logit step 0.095).
    """
    q_ops = {"quantize_per_tensor", "dequantize_per_tensor"}
    out = next(n for n in graph.graph.nodes if n.op == "output")
    for dq in list(out.all_input_nodes):
        q = dq.args[0] if dq.args else None
        if _op_name(dq) in q_ops and isinstance(q, torch.fx.Node) and _op_name(q) in q_ops:
            out.replace_input_with(dq, q.args[0])
    graph.graph.eliminate_dead_code()
    graph.recompile()


def _op_name(node) -> str:
    return getattr(getattr(node.target, "_overloadpacket", None), "__name__", "") if node.op == "call_function" else ""


def _fp16_weights(fp32_path: Path) -> bytes:
    """The fp32 artifact with every conv / fully-connected weight stored as float16 (dequantized at load)."""
    require("ai_edge_quantizer", "tflite")
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(str(fp32_path))
    q.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    with _quiet():
        return bytes(q.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model)


def int8_weights_everywhere(path: Path) -> tuple[bytes, list[str]]:
    """The int8 file at ``path`` with its float fully-connected layers given int8 weights, and their names."""
    float_fc = _float_fully_connected(path)
    return (_dynamic_int8_weights(path, float_fc) if float_fc else path.read_bytes()), float_fc


def _float_fully_connected(path: Path) -> list[str]:
    """Output tensor names (as ai-edge-quantizer matches them) of the FULLY_CONNECTED ops with float weights.

    With ``float_output`` the last layer writes float logits, so litert-torch leaves it float, weights included:
    a 1280x1000 classifier then streams 5 MB of float weights per image (about 0.2 ms of a RepGhostNet-1.0x
    at 224 px, 1 thread; bench/results/int8_pieces_repghost.json).
    """
    from ai_edge_litert.schema_py_generated import BuiltinOperator, TensorType
    from ai_edge_litert.tools.flatbuffer_utils import get_builtin_code_from_operator_code, read_model

    model = read_model(str(path))
    codes = [get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    names = []
    for graph in model.subgraphs:
        for op in graph.operators:
            if codes[op.opcodeIndex] == BuiltinOperator.FULLY_CONNECTED and len(op.inputs) > 1:
                weights = graph.tensors[op.inputs[1]]
                if weights.type == TensorType.FLOAT32 and model.buffers[weights.buffer].data is not None:
                    names.append(graph.tensors[op.outputs[0]].name.decode())
    return names


def _dynamic_int8_weights(path: Path, outputs: list[str]) -> bytes:
    """``path`` with the fully-connected ops writing ``outputs`` given symmetric per-channel int8 weights.

    Their input and output stay float32; XNNPACK quantizes the input per image at run time (dynamic range), so
    the logits are not rounded to int8 (the reason for ``float_output``) and their input is the int8 tensor the
    layer before wrote, dequantized: little is lost. Only these ops are touched (matched by output name).
    """
    require("ai_edge_quantizer", "tflite")
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(str(path))
    q.add_dynamic_config(
        regex="|".join(re.escape(name) for name in outputs),  # searched in the op's scope name: no anchors
        operation_name=qtyping.TFLOperationName.FULLY_CONNECTED,
        num_bits=8,
        granularity=qtyping.QuantGranularity.CHANNELWISE,
    )
    # Its tensor-transformation progress bar goes to stderr whatever enable_progress_bar says.
    with _quiet(), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Input model is already partially quantized")  # that is the point
        return bytes(q.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model)


def _interpreter(path: Path):
    interp = interpreter_lib.Interpreter(model_path=str(path), num_threads=RUN_THREADS)
    interp.allocate_tensors()
    return interp


def _qparams(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}


def to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input as the interpreter tensor wants it: quantized with its scale/zero point for int8 I/O."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _from_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y.copy()
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence litert-torch's progress lines (edgerep shows its own progress); errors still raise."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old
