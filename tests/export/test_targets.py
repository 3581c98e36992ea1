"""Targets as data: every shipped targets/*.toml parses, and what a target does not allow is refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerep.errors import BadInputError
from edgerep.export import targets
from edgerep.export.targets import TOLERANCE_KEYS, get_target, target_names


def test_every_shipped_target_parses_and_its_defaults_are_allowed() -> None:
    names = target_names()
    assert "onnx" in names
    for name in names:
        t = get_target(name)
        assert t.name == name and t.suffix.startswith(".")
        assert t.default_precision in t.precisions and t.default_layout in t.layouts
        opts = t.resolve_options(None)
        assert set(opts) == set(t.options)
        for p in t.precisions.values():
            assert set(p.tolerance) <= set(TOLERANCE_KEYS)
            assert not p.calibration or p.min_calibration_images > 0


def test_onnx_target_declares_the_issue_s_contract() -> None:
    t = get_target("onnx")
    assert list(t.precisions) == ["fp32", "fp16", "int8"]
    assert t.resolve_options(None)["opset"] == 18
    int8 = t.precision("int8")
    assert int8.calibration and int8.scheme == "qdq-per-channel" and int8.schemes == ("qdq-per-channel",)
    assert {"top1_agreement", "cosine"} <= set(int8.tolerance) and "rel" not in int8.tolerance
    assert "rel" in t.precision("fp32").tolerance
    assert "rel" in t.precision("fp16").tolerance


def test_options_are_checked_and_cli_strings_accepted() -> None:
    t = get_target("onnx")
    opts = t.resolve_options({"opset": "20", "simplify": "false", "calibrate_method": "percentile"})
    assert opts["opset"] == 20 and opts["simplify"] is False and opts["calibrate_method"] == "percentile"
    assert t.resolve_options({})["int8_budget"] == 0  # a number range with a named choice beside it
    assert t.resolve_options({"int8_budget": "AUTO"})["int8_budget"] == "auto"
    assert t.resolve_options({"int8_budget": "3"})["int8_budget"] == 3


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda t: t.resolve_options({"opset": 11}), ["opset=11", "18..23"]),
        (lambda t: t.resolve_options({"opset": "eighteen"}), ["opset=eighteen", "18..23"]),
        (lambda t: t.resolve_options({"compute_units": "all"}), ["compute_units", "opset", "exporter"]),
        (lambda t: t.resolve_options({"calibrate_method": "mse"}), ["mse", "minmax, percentile, entropy"]),
        (lambda t: t.resolve_options({"int8_budget": "some"}), ["int8_budget=some", "auto, 0..1000"]),
        (lambda t: t.resolve_options({"int8_budget": -1}), ["int8_budget=-1", "auto, 0..1000"]),
        (lambda t: t.precision("int4"), ["int4", "fp32, fp16, int8"]),
        (lambda t: t.resolve_scheme(t.precision("int8"), "dynamic"), ["dynamic", "qdq-per-channel"]),
        (lambda t: t.resolve_layout("nhwc"), ["nhwc", "nchw"]),
        (lambda t: t.tolerance(t.precision("int8"), {"accuracy": 0.5}), ["accuracy", "top1_agreement"]),
    ],
)
def test_refusals_are_one_line_and_list_the_allowed(call, words) -> None:
    with pytest.raises(BadInputError) as exc:
        call(get_target("onnx"))
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_unknown_target_lists_the_shipped_ones() -> None:
    with pytest.raises(BadInputError, match="unknown target 'tensorrt'; use one of: .*onnx"):
        get_target("tensorrt")


def test_tolerance_override_tightens_or_relaxes_one_key() -> None:
    t = get_target("onnx")
    tol = t.tolerance(t.precision("int8"), {"top1_agreement": 0.5})
    assert tol["top1_agreement"] == 0.5 and tol["cosine"] == t.precision("int8").tolerance["cosine"]


def test_a_broken_target_file_names_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.toml").write_text('name = "bad"\nsuffix = ".x"\n')  # no [precisions]
    monkeypatch.setattr(targets, "data_folder", lambda _name: tmp_path)
    targets._load.cache_clear()
    try:
        with pytest.raises(BadInputError, match="bad.toml is invalid"):
            get_target("bad")
    finally:
        targets._load.cache_clear()


@pytest.mark.parametrize("name", target_names())
def test_each_backend_implements_exactly_what_its_target_file_lists(name: str) -> None:
    from edgerep.backends import backend_for

    target = get_target(name)
    pytest.importorskip({"onnx": "onnxruntime", "tflite": "ai_edge_litert", "coreml": "coremltools",
                         "executorch": "executorch"}.get(name, name))
    backend = backend_for(target)  # raises when the code and the TOML disagree
    assert backend.suffix == target.suffix and set(backend.precisions) == set(target.precisions)


def test_a_target_file_that_lists_a_precision_the_code_lacks_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from edgerep.backends import backend_for

    pytest.importorskip("onnxruntime")
    onnx = get_target("onnx")
    extra = replace(onnx, precisions={**onnx.precisions, "int4": onnx.precisions["int8"]})
    with pytest.raises(RuntimeError, match="lists precisions .*int4.* implements"):
        backend_for(extra)
