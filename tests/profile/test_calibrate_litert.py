"""`edgerep calibrate --runtime litert`: the .tflite kernel suite (ops, int8), a tiny real calibration on this host,
resuming without converting twice, and the runtime-mismatch refusal of `edgerep profile --device FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch")

from edgerep.cli import main  # noqa: E402
from edgerep.profile import calibrate as cal  # noqa: E402
from edgerep.profile import kernel_suite_tflite as kst  # noqa: E402
from edgerep.profile.graph_cost import graph_cost  # noqa: E402
from edgerep.profile.kernel_suite import SUITES, build_onnx, sample_specs  # noqa: E402

SMALL = ("pointwise", "depthwise3x3s2", "act:hardswish", "add")
"""A dense and a depthwise conv, an op int8 keeps float (hard-swish), one with a second operand (add)."""
WANT = {"pointwise": {"CONV_2D"}, "depthwise3x3s2": {"DEPTHWISE_CONV_2D", "PAD"}, "act:hardswish": {"HARD_SWISH"},
        "add": {"ADD"}}
"""Ops each kernel's file must hold (a stride-2 conv with symmetric padding becomes PAD + a VALID conv)."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One suite cache for the module: files converted once, reused by every test (as across devices)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEREP_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def built(cache):
    specs = sample_specs(1, kernels=SMALL)
    return kst.build_tflite([(s, p) for s in specs for p in ("fp32", "int8")])


def _model(path: Path):
    from ai_edge_litert.schema_py_generated import BuiltinOperator
    from ai_edge_litert.tools.flatbuffer_utils import get_builtin_code_from_operator_code, read_model

    model = read_model(str(path))
    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[get_builtin_code_from_operator_code(c)] for c in model.operatorCodes]
    return model, [(codes[op.opcodeIndex], op) for op in model.subgraphs[0].operators]


def test_suite_files_hold_the_intended_ops_nhwc(built):
    for (spec, precision), path in built.items():
        model, ops = _model(path)
        names = {name for name, _ in ops}
        assert len(model.subgraphs) == 1 and WANT[spec.kernel] <= names, (spec.id, precision, names)
        assert "TRANSPOSE" not in names  # NHWC in and out: no layout change at either end
        sub = model.subgraphs[0]
        assert list(sub.tensors[sub.inputs[0]].shape) == [1, spec.size, spec.size, spec.cin]
        cost = graph_cost(path)
        assert not cost.partial and spec.kernel in {lc.kernel for lc in cost.costed}


def test_int8_suite_files_are_full_integer(built):
    """int8 in and out; every conv / fc weight int8 per output channel with int32 bias; a float op only between a
    DEQUANTIZE and a QUANTIZE (the ones litert-torch's quantizer leaves float, as in users' files)."""
    for (spec, precision), path in built.items():
        if precision != "int8":
            continue
        model, ops = _model(path)
        sub = model.subgraphs[0]
        t = sub.tensors

        def acts(ids) -> list[int]:  # tensors computed at run time (not weights, pads, axes)
            return [i for i in ids if i >= 0 and model.buffers[t[i].buffer].data is None]

        assert all(t[i].type == 9 for i in list(sub.inputs) + list(sub.outputs)), spec.id  # INT8
        for name, op in ops:
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                w, b = t[op.inputs[1]], t[op.inputs[2]]
                channels = w.shape[0] if name != "DEPTHWISE_CONV_2D" else w.shape[-1]
                assert w.type == 9 and len(w.quantization.scale) == channels, (spec.id, name)
                assert b.type == 2, (spec.id, name)  # INT32
                assert t[op.inputs[0]].type == 9 and t[op.outputs[0]].type == 9, (spec.id, name)
            elif name not in ("QUANTIZE", "DEQUANTIZE"):
                kinds = {t[i].type for i in acts(list(op.inputs) + list(op.outputs))}
                assert kinds in ({9}, {0}), (spec.id, name, kinds)  # all int8, or all float inside DQ / Q
        float_ops = [n for n, op in ops if n not in ("QUANTIZE", "DEQUANTIZE") and t[op.outputs[0]].type == 0]
        requant = [n for n, _ in ops if n in ("QUANTIZE", "DEQUANTIZE")]
        assert bool(float_ops) == bool(requant), (spec.id, float_ops, requant)


def test_split_signatures_runs_like_the_module(built):
    """A split-out file computes its spec's module (fp32, NHWC): the split kept the right weights."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    for (spec, precision), path in built.items():
        if precision != "fp32":
            continue
        module = kst.SuiteNet(spec).eval()
        x = np.random.default_rng(0).standard_normal(module.input_shape).astype(np.float32)
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        got = interp.get_tensor(interp.get_output_details()[0]["index"])
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=spec.id)


def test_left_out_kernels_are_refused_with_the_reason(capsys):
    assert "shape" not in SUITES["litert"] and "pointwise" in SUITES["litert"]
    assert main(["calibrate", "host", "-o", "x.toml", "--runtime", "litert", "--kernels", "shape"]) == 2
    assert "static shapes" in capsys.readouterr().err


def test_tiny_litert_calibration_on_host_then_profile(built, tmp_path, capsys):
    """The real timer on this host over the module's suite files (already converted: read from the suite cache),
    then `profile --device FILE` on a .tflite the suite never built; the device file records the runtime and
    refuses ONNX files."""
    out = tmp_path / "host_litert.toml"
    argv = ["calibrate", "host", "-o", str(out), "--runtime", "litert", "--per-kernel", "1", "--budget", "3",
            "--json", "--kernels", ",".join(SMALL)]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["runtime"] == "litert" and d["fits"][0]["models"] == len(SMALL)
    assert 'suite_builder = "litert-torch ' in out.read_text()
    unseen = sample_specs(1, seed=3, kernels=("pointwise",))[0]
    path = kst.build_tflite([(unseen, "fp32")], tmp_path)[(unseen, "fp32")]
    assert main(["profile", str(path), "--device", str(out), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["runtime"] == "litert" and p["latency_ms"] > 0 and p["precision"] == "fp32"
    onnx = build_onnx(unseen, tmp_path / "m.onnx")
    assert main(["profile", str(onnx), "--device", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds litert kernel timings" in err and "--runtime onnxruntime" in err


def test_onnx_device_file_refuses_a_tflite_file(built, tmp_path, capsys):
    from test_calibrate import SMALL as ONNX_SMALL
    from test_calibrate import _synthetic_ms

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cal, "_time", lambda device, files, *a: {k: _synthetic_ms(p) for k, p in files.items()})
        out = cal.calibrate("host", tmp_path / "ort.toml", per_kernel=2, kernels=ONNX_SMALL[:2], progress=False)
    tflite = next(iter(built.values()))
    assert main(["profile", str(tflite), "--device", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds onnxruntime kernel timings" in err and "--runtime litert" in err


def test_interrupted_litert_calibration_converts_nothing_twice(built, tmp_path, monkeypatch):
    """Files converted before an interruption stay in the suite cache: the resumed run times the rest and converts
    nothing again. The cache starts as the module's minus the first spec's two files."""
    import shutil

    from test_calibrate import _synthetic_ms

    monkeypatch.setenv("EDGEREP_CACHE", str(tmp_path / "cache"))
    first = sample_specs(1, kernels=SMALL)[0]
    kst.suite_dir().mkdir(parents=True)
    for (spec, _), path in built.items():
        if spec != first:
            shutil.copy(path, kst.suite_dir() / path.name)
    converted: list[str] = []
    real_convert = kst._convert

    def counting(specs, int8):
        converted.extend(s.id for s in specs)
        return real_convert(specs, int8)

    calls = {"n": 0}

    def flaky(device, files, *a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return {k: _synthetic_ms(p) for k, p in files.items()}

    monkeypatch.setattr(kst, "_convert", counting)
    monkeypatch.setattr(cal, "_time", flaky)
    monkeypatch.setitem(cal.BATCH, "litert", 4)  # steps of 2 specs x 2 precisions
    out = tmp_path / "dev.toml"
    with pytest.raises(KeyboardInterrupt):
        cal.calibrate("host", out, runtime="litert", per_kernel=1, kernels=SMALL, progress=False)
    assert not out.exists()
    assert len(json.loads((tmp_path / "dev.toml.partial.json").read_text())["ms"]) == 4
    assert converted == [first.id, first.id]  # its fp32 and int8 files: the only ones missing
    cal.calibrate("host", out, runtime="litert", per_kernel=1, kernels=SMALL, progress=False)
    assert converted == [first.id, first.id]  # the resumed run read every file from the suite cache
    device = cal.load_device_file(out)
    assert device.runtime == "litert" and device.table("int8", 1).models == len(SMALL)


@pytest.mark.slow
def test_every_litert_suite_kernel_builds_and_costs_as_its_kernel(cache):
    """One shape of every kernel of the LiteRT suite, fp32 and int8: converted, costed in full (no unknown op),
    and holding the kernel it is there to time."""
    specs = sample_specs(1, kernels=SUITES["litert"])
    wrong = []
    for (spec, precision), path in kst.build_tflite([(s, p) for s in specs for p in ("fp32", "int8")]).items():
        cost = graph_cost(path)
        kernels = {lc.kernel for lc in cost.costed}
        want = {"block:se": "pool:global", "block:mbconv": "depthwise3x3s1",
                "mul_broadcast": "mul"}.get(spec.kernel, spec.kernel)  # TFLite has one MUL, broadcast or not
        if spec.kernel.startswith("gconv"):
            want = f"{spec.kernel}w{spec.width}"
        if spec.kernel == "mul_broadcast" and precision == "fp32":
            want = "depthwise3x3s1"  # litert-torch folds a constant per-channel scale into the conv before it
            if "mul" in kernels:
                wrong.append((spec.id, precision, "MUL not folded", kernels))
        if cost.partial or want not in kernels:
            wrong.append((spec.id, precision, want, kernels))
    assert not wrong, wrong
