"""What every backend shares for bad input: unsupported layers are named by path and op, missing optional
packages give a one-line install hint. Each backend's own test file converts a real unsupported layer."""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict

import pytest
import torch
from conftest import CumMax, SingularValues
from torch import nn

from edgerep.backends import get_backend
from edgerep.backends.base import UnsupportedLayerError, conversion_error, locate_op, op_key
from edgerep.errors import BadInputError, MissingDependencyError
from edgerep.export.targets import get_target


def _net() -> nn.Module:
    head = nn.Sequential(OrderedDict(act=nn.ReLU(), pool=CumMax(), again=CumMax()))
    return nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 1), head=head, spectral=SingularValues())).eval()


X = torch.randn(1, 3, 4, 4)


@pytest.mark.parametrize(
    ("name", "key"),
    [("aten::cummax", "cummax"), ("aten.cummax.default", "cummax"), ("linalg_svdvals", "linalg_svdvals"),
     ("torch.ops.aten._linalg_svd.default", "_linalg_svd"), ("fft_rfft2", "fft_rfft2")],
)
def test_op_key_reads_every_converter_spelling(name: str, key: str) -> None:
    assert op_key(name) == key


def test_locate_op_finds_layers_at_torch_and_aten_level() -> None:
    net = _net()
    assert locate_op(net, X, "aten::cummax") == ["head.pool (CumMax)", "head.again (CumMax)"]
    assert locate_op(net, X, "linalg_svdvals") == ["spectral (SingularValues)"]  # torch function (TorchScript)
    assert locate_op(net, X, "aten._linalg_svd") == ["spectral (SingularValues)"]  # ATen op (torch.export)
    assert locate_op(net, X, "aten.convolution.default") == ["stem (Conv2d)"]
    assert locate_op(net, X, "aten::histc") == []
    out = net(X)  # the hooks are gone and never changed an output
    assert torch.equal(net(X), out) and not net.head.pool._forward_hooks


def test_conversion_error_is_one_line_names_layer_op_and_fix() -> None:
    summary = RuntimeError(
        "Failed to convert.\n## Exception summary\n\n<class 'torch.onnx._internal.exporter._errors.DispatchError'>:"
        " No ONNX function found for <OpOverload(op='aten.cummax', overload='default')>\n\x1b[96mmore\x1b[0m"
    )
    err = conversion_error("onnx", "torch.onnx.export", summary, (r"OpOverload\(op='([\w.]+)'",), _net(), X, "do this")
    msg = str(err)
    assert isinstance(err, BadInputError) and err.exit_code == 2 and "\n" not in msg and "\x1b" not in msg
    assert msg.startswith("onnx cannot convert layer head.pool (CumMax) (and 1 more): op aten.cummax")
    assert "(DispatchError: No ONNX function found" in msg and msg.endswith("; do this")


def test_conversion_error_without_an_op_still_says_what_failed() -> None:
    try:
        try:
            raise ValueError("deep detail 'aten::histc'")
        except ValueError as inner:
            raise RuntimeError("conversion failed\nsecond line") from inner
    except RuntimeError as exc:
        found = conversion_error("x", "conv", exc, (r"'(aten::\w+)'",), _net(), X, "fix")  # op from the cause
        lost = conversion_error("x", "conv", exc, (r"nothing (\w+)",), _net(), X, "fix")
    assert str(found).startswith("x cannot convert a layer (not located): op aten::histc")
    assert str(lost) == "x: conv could not convert the model (RuntimeError: conversion failed); fix"
    assert isinstance(lost, UnsupportedLayerError)


# --- missing optional dependencies -----------------------------------------------------------------------------------

_DEPENDENCIES = [
    ("onnx", "onnx"), ("onnx", "onnxruntime"),
    ("tflite", "litert_torch"), ("tflite", "ai_edge_litert.interpreter"),
    ("coreml", "coremltools"),
]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module.split(".")[0]) is not None


@pytest.mark.parametrize(("target", "module"), _DEPENDENCIES)
def test_missing_backend_dependency_gives_a_one_line_install_hint(monkeypatch, target: str, module: str) -> None:
    if not _installed(module):
        pytest.skip(f"{module} is not installed, the real case is covered")
    tgt = get_target(target)
    monkeypatch.setitem(sys.modules, module, None)  # import of it -> ImportError
    monkeypatch.delitem(sys.modules, f"edgerep.backends.{tgt.backend}", raising=False)
    with pytest.raises(MissingDependencyError) as exc:
        get_backend(tgt.backend, tgt.extra)
    msg = str(exc.value)
    assert module in msg and f'pip install "edgerep[{tgt.extra}]"' in msg and "\n" not in msg
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    ("backend", "module", "call"),
    [
        ("tflite", "ai_edge_quantizer", lambda b, tmp: b._fp16_weights(tmp / "m.tflite")),
        ("tflite", "torchao", lambda b, tmp: b._convert_int8(nn.Identity(), "image", X, X, "minmax", True)),
        ("coreml", "sklearn", lambda b, tmp: b._palettize(None, 6)),
        ("onnx", "onnxscript", lambda b, tmp: b._torch_export(nn.Identity(), X.shape, tmp / "m.onnx", 18, "dynamo")),
        ("coreml", "coremltools", lambda b, tmp: b.load_program(tmp / "m.mlpackage")),
    ],
)
def test_packages_imported_late_give_the_hint_too(monkeypatch, tmp_path, backend: str, module: str, call) -> None:
    """Packages a backend needs only for some precisions are imported when used: same one-line hint."""
    if not all(_installed(m) for m in (module, *(m for t, m in _DEPENDENCIES if t == backend))):
        pytest.skip(f"the {backend} backend or {module} is not installed")
    backend_module = importlib.import_module(f"edgerep.backends.{backend}")
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=rf'{module}.*pip install "edgerep\[{backend}\]"'):
        call(backend_module, tmp_path)
