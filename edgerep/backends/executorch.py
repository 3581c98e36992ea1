"""ExecuTorch backend: torch.export -> edge dialect -> XNNPACK delegate -> .pte; run with ExecuTorch's runtime.

Choices (measured, see shared/notes/dependencies.md):
- Every op XNNPACK supports is delegated to it (``XnnpackPartitioner``): that is ExecuTorch's CPU fast path
  on Android and iOS. Ops it does not take stay on ExecuTorch's portable kernels; the manifest notes name
  them, since they run slower on a phone.
- int8 is static PT2E with ExecuTorch's own ``XNNPACKQuantizer`` (symmetric per-channel int8 weights, int8
  activations calibrated on real images), the config XNNPACK has int8 kernels for. Before it the deploy model
  goes through ``edgerep.quant.prepare`` like every target (equalization, bias correction, AdaRound, layers
  kept float by ``int8_budget``; each kept only if held-out calibration images agree).
- The artifact has the request's fixed batch; ``run`` feeds inputs batch by batch with the Python runtime
  (``executorch.runtime``), the same C++ runtime and XNNPACK kernels a phone runs.
- ExecuTorch's thread pool is left as it is: resetting it after a program was loaded segfaulted here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BadInputError, require
from ..quant import check_calibration, from_options
from .base import ExportInfo, ExportRequest, InputSpec, explained

INPUT_NAME = "input"  # a .pte has positional inputs; the name is what the manifest calls input 0
OUTPUT_NAME = "output"
METHOD = "forward"
# How torch.export / the edge passes name the node they failed at, or an op with no out-variant kernel.
_OP_PATTERNS = (r"target=torch\.ops\.([\w.]+)", r"Missing out variants: \{'([\w:.]+)'", r"(aten::\w+)")

# Import now so a missing package is reported when the backend is chosen, not halfway through an export.
require("executorch", "executorch")
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: E402
from executorch.exir import to_edge_transform_and_lower  # noqa: E402
from executorch.runtime import Runtime  # noqa: E402


class ExecuTorchBackend:
    name = "executorch"
    suffix = ".pte"
    precisions = ("fp32", "int8")
    layouts = ("nchw",)

    def export(self, model: nn.Module, request: ExportRequest, path: Path) -> ExportInfo:
        """Write ``model`` as an XNNPACK-delegated .pte program at ``path`` in the requested precision."""
        example = torch.zeros(request.input_shape)
        quant: dict = {}
        with explained("executorch", f"executorch {_version()} (XNNPACK)", _OP_PATTERNS, model, example,
                       "replace or remove the layer, or export to another target (onnx, tflite, coreml)"), _quiet():
            if request.precision == "int8":
                graph, quant = _quantize(model.eval(), example, request)
            else:
                graph = model.eval()
            exported = torch.export.export(graph, (example,))
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
            delegated, portable = _op_split(edge.exported_program().graph_module)  # before memory planning
            program = edge.to_executorch()
        path.write_bytes(program.buffer)
        notes = [f"XNNPACK delegate: {delegated} subgraph(s); batch {request.input_shape[0]}"]
        if portable:
            notes.append("left on portable kernels (slower on device): "
                         + ", ".join(f"{op} x{n}" for op, n in sorted(portable.items())))
        return ExportInfo(INPUT_NAME, OUTPUT_NAME, "float32", quant, notes)

    def input_spec(self, path: Path) -> InputSpec:
        return InputSpec(tuple(_method(Path(path)).metadata.input_tensor_meta(0).sizes()), "nchw")

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the .pte on NCHW float32 inputs with ExecuTorch's runtime, in batches of its fixed batch size."""
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        method = _method(Path(path))
        shape = tuple(method.metadata.input_tensor_meta(0).sizes())
        if x.ndim != len(shape) or tuple(x.shape[1:]) != shape[1:]:
            raise BadInputError(f"{Path(path).name} takes input {shape}, got inputs of shape {tuple(x.shape)}")
        batch = shape[0]
        if len(x) % batch:
            raise BadInputError(f"{Path(path).name} takes batches of {batch}; got {len(x)} inputs")
        outs = [method.execute((x[i : i + batch],))[0] for i in range(0, len(x), batch)]
        return torch.cat(outs).float().numpy()


def _quantize(model: nn.Module, example: Tensor, request: ExportRequest) -> tuple[nn.Module, dict]:
    """Static PT2E int8 for XNNPACK: export, observe every calibration batch, convert (quantize ops folded)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantizer import get_module_name_filter
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    calib = check_calibration(request.calibration, request.input_shape, "executorch")
    # XNNPACK's config observes activations with HistogramObserver (L2-optimal ranges): the held-out judge simulates
    # the same ("mse"), as the TFLite target's does; judged on min/max ranges it dropped equalization and bias
    # correction that the real artifact gains from (bench/results/int8_accuracy_repvgg_a0_executorch_mse.json)
    model, record = from_options(model, calib, {**request.options, "calibrate_method": "mse"})
    batch = example.shape[0]
    if len(calib) < batch:
        raise BadInputError(f"int8 calibration needs at least {batch} images (the model's batch); got {len(calib)}")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if record["keep_fp"]:  # int8_budget / keep_fp layers stay float (XNNPACK runs them in fp32)
        # XNNPACKQuantizer refuses set_module_name(name, None); a node filter leaves the layers unannotated
        in_float = [get_module_name_filter(layer) for layer in record["keep_fp"]]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in in_float))
    graph = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    graph = move_exported_model_to_eval(graph)
    with torch.no_grad():
        for i in range(0, len(calib) - len(calib) % batch, batch):
            graph(calib[i : i + batch].float())
    info = {"scheme": "pt2e-xnnpack-per-channel", "weights": "int8, symmetric, per output channel",
            "activations": "int8, asymmetric, per tensor", "calibration_images": int(len(calib)),
            "transforms": record, "float_layers": record["keep_fp"]}
    return convert_pt2e(graph), info


def _op_split(graph_module) -> tuple[int, Counter]:
    """How many XNNPACK-delegated subgraphs the program has, and which ops stayed outside them."""
    delegated, portable = 0, Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "call_delegate" in name:
            delegated += 1
        elif name != "getitem":
            portable[name] += 1
    return delegated, portable


_CACHE: dict[tuple[str, float], object] = {}


def _method(path: Path):
    """The loaded ``forward`` of one artifact version: validation runs the same .pte on several input sets."""
    if not path.is_file():
        raise BadInputError(f"ExecuTorch program {path} does not exist")
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _CACHE:
        _CACHE.clear()
        program = Runtime.get().load_program(path)
        _CACHE[key] = (program, program.load_method(METHOD))  # the method needs its program alive
    return _CACHE[key][1]


def _version() -> str:
    from importlib.metadata import version

    return version("executorch")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress lines and deprecation notices; errors still raise."""
    logger = logging.getLogger("executorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


BACKEND = ExecuTorchBackend()
