"""edgerep check: the accuracy gate passes, fails (exit 1, with a table), refuses bad baselines (exit 2), updates.

The last tests break the shipped model on purpose (10% noise on every conv weight) and show the gate catching
it against the committed project baseline, for the checkpoint and for an exported ONNX artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import one_error_line, run_cli

from edgerep import defaults
from edgerep.accuracy.gate import BASELINE_FORMAT
from edgerep.checkpoints import Checkpoint, load_model, save_checkpoint

PROJECT_BASELINE = Path(__file__).resolve().parents[2] / ".ci" / "accuracy-baseline.json"
MODEL = "repghostnet_050"


def row(target: str, precision: str, top1: float | None, agree: float | None = None, cosine: float | None = None,
        count: int = 200) -> dict:
    """One row as `edgerep eval --json` writes it."""
    agreement = None if agree is None else {"reference": "ck.pt", "top1": agree, "kl": 0.01, "cosine": cosine}
    return {"model": MODEL, "target": target, "precision": precision, "path": f"x.{target}", "form": None,
            "data": "photos", "count": count, "top1": top1, "top5": None, "agreement": agreement,
            "size_bytes": 1, "seconds": 0.1, "labels": "by name", "notes": []}


def write(path: Path, doc: object) -> str:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def results(tmp_path: Path, *rows: dict, name: str = "results.json") -> str:
    return write(tmp_path / name, {"kind": "edgerep.eval", "version": 1, "data": "photos (200 images)",
                                   "results": list(rows)})


def baseline(tmp_path: Path, *rows: dict) -> str:
    return write(tmp_path / "baseline.json", {"format": BASELINE_FORMAT, "version": 1, "data": "photos",
                                              "rows": list(rows)})


def base(target: str, precision: str, top1_pct: float | None, **extra) -> dict:
    r = {"model": MODEL, "target": target, "precision": precision, "count": 200, **extra}
    if top1_pct is not None:
        r["top1_pct"] = top1_pct
    return r


# --- pass and fail ----------------------------------------------------------------------------------


def test_within_tolerance_passes_with_a_table(capsys, tmp_path) -> None:
    res = results(tmp_path, row("onnx", "fp32", 0.688, 1.0, 0.99999), row("onnx", "int8", 0.665, 0.92, 0.99))
    bl = baseline(tmp_path, base("onnx", "fp32", 69.0, min_top1_agreement=0.995),
                  base("onnx", "int8", 67.0, min_cosine=0.98))
    code, out, err = run_cli(capsys, "check", res, "--baseline", bl)
    assert code == 0 and "PASS: 2 rows" in out and "FAIL" not in out + err
    assert "69.00" in out and "68.80" in out and "+0.20" in out


def test_default_tolerance_is_half_a_point_for_float_and_one_point_for_8bit(capsys, tmp_path) -> None:
    res = results(tmp_path, row("onnx", "fp32", 0.6825), row("coreml", "w8", 0.6825), row("tflite", "int8", 0.6775))
    bl = baseline(tmp_path, base("onnx", "fp32", 69.0), base("coreml", "w8", 69.0), base("tflite", "int8", 69.0))
    code, out, err = run_cli(capsys, "check", res, "--baseline", bl, "--json")
    verdict = {(r["target"], r["precision"]): r["passed"] for r in json.loads(out)["rows"]}
    assert code == 1 and verdict == {("onnx", "fp32"): False, ("coreml", "w8"): True, ("tflite", "int8"): False}
    assert "FAIL repghostnet_050 onnx fp32: top-1 dropped 0.75 points" in err


def test_tolerance_is_configurable_per_row(capsys, tmp_path) -> None:
    res = results(tmp_path, row("onnx", "fp32", 0.67))
    code, _, _ = run_cli(capsys, "check", res, "--baseline", baseline(tmp_path, base("onnx", "fp32", 69.0)))
    assert code == 1
    code, _, _ = run_cli(capsys, "check", res, "--baseline",
                     baseline(tmp_path, base("onnx", "fp32", 69.0, tolerance_pct=2.0)))
    assert code == 0


def test_agreement_below_its_floor_fails_even_without_labels(capsys, tmp_path) -> None:
    res = results(tmp_path, row("tflite", "int8", None, 0.80, 0.97))
    bl = baseline(tmp_path, base("tflite", "int8", None, min_top1_agreement=0.9, min_cosine=0.98))
    code, out, err = run_cli(capsys, "check", res, "--baseline", bl)
    assert code == 1 and "FAIL: 1 of 1 rows regressed" in out
    assert "top-1 agreement 0.8 < floor 0.9" in err and "cosine 0.97 < floor 0.98" in err


def test_a_failed_export_row_fails_the_gate(capsys, tmp_path) -> None:
    doc = {"ok": False, "model": MODEL, "results": [
        {"target": "onnx", "precision": "int8", "status": "FAILED", "error": "cosine 0.5 < 0.95", "validation": None},
        {"target": "onnx", "precision": "fp32", "status": "validated", "validation": {"sets": [
            {"label": "200 validation images from test", "kind": "images", "n": 200, "cosine": 1.0,
             "top1_agreement": 1.0, "accuracy_artifact": 0.69}]}},
    ]}
    res = write(tmp_path / "export.json", doc)
    code, out, err = run_cli(capsys, "check", res, "--baseline",
                         baseline(tmp_path, base("onnx", "int8", 67.0), base("onnx", "fp32", 69.0)))
    assert code == 1 and "FAIL repghostnet_050 onnx int8: export FAILED" in err
    assert [ln.split()[-1] for ln in out.splitlines() if ln.startswith(MODEL)] == ["FAIL", "ok"]


# --- bad input: exit 2, one line ----------------------------------------------------------------------


def test_rows_missing_on_either_side_are_bad_input(capsys, tmp_path) -> None:
    res = results(tmp_path, row("onnx", "fp32", 0.69))
    bl = baseline(tmp_path, base("onnx", "fp32", 69.0), base("tflite", "int8", 67.0))
    code, _, err = run_cli(capsys, "check", res, "--baseline", bl)
    assert code == 2 and "results lack 1 row(s)" in one_error_line(err) and "tflite int8" in err
    res = results(tmp_path, row("onnx", "fp32", 0.69), row("coreml", "w8", 0.69))
    code, _, err = run_cli(capsys, "check", res, "--baseline", baseline(tmp_path, base("onnx", "fp32", 69.0)))
    assert code == 2 and "no row for repghostnet_050 coreml w8" in one_error_line(err) and "--update" in err


@pytest.mark.parametrize("doc, message", [
    ("{not json", "is not valid JSON (line 1"),
    ({"rows": []}, "is not an edgerep accuracy baseline"),
    ({"format": BASELINE_FORMAT, "version": 7, "rows": []}, "has version 7"),
    ({"format": BASELINE_FORMAT, "version": 1, "rows": []}, "no \"rows\" list (or it is empty)"),
    ({"format": BASELINE_FORMAT, "version": 1, "rows": [{"model": MODEL, "target": "onnx", "count": 200}]},
     "row 1 needs 'precision'"),
    ({"format": BASELINE_FORMAT, "version": 1, "rows": [base("onnx", "fp32", "high")]},
     "'top1_pct' must be a number from 0 to 100, got 'high'"),
    ({"format": BASELINE_FORMAT, "version": 1, "rows": [base("onnx", "fp32", 69.0, tolerance=1)]},
     "unknown field 'tolerance'"),
    ({"format": BASELINE_FORMAT, "version": 1, "rows": [base("onnx", "fp32", 69.0), base("onnx", "fp32", 68.0)]},
     "row 2 repeats repghostnet_050 onnx fp32"),
    ({"format": BASELINE_FORMAT, "version": 1, "rows": [{**base("onnx", "fp32", 69.0), "count": 0}]},
     "needs \"count\""),
])
def test_malformed_baseline_is_one_line(capsys, tmp_path, doc, message) -> None:
    res = results(tmp_path, row("onnx", "fp32", 0.69))
    code, _, err = run_cli(capsys, "check", res, "--baseline", write(tmp_path / "bl.json", doc))
    assert code == 2 and message in one_error_line(err)


def test_results_that_cannot_be_compared_are_bad_input(capsys, tmp_path) -> None:
    bl = baseline(tmp_path, base("onnx", "fp32", 69.0, min_cosine=0.999))
    cases = [  # (results rows or a whole document, the message)
        ([row("onnx", "fp32", 0.69, 1.0, 1.0, count=100)], "measured on 100 images, the baseline on 200"),
        ([row("onnx", "fp32", None, 1.0, 1.0)], "has no top-1"),
        ([row("onnx", "fp32", 0.69)], "has no cosine with an fp32 reference"),
        ([row("onnx", "fp32", 0.69), row("onnx", "fp32", 0.68)], "more than once"),
        ({"results": []}, "has no \"results\" list"),
        ({"kind": "edgerep.eval", "results": [{"model": MODEL}]}, "is not edgerep eval"),
        (None, "does not exist"),
    ]
    for i, (content, message) in enumerate(cases):
        res = tmp_path / f"r{i}.json"
        if isinstance(content, list):
            results(tmp_path, *content, name=res.name)
        elif content is not None:
            write(res, content)
        code, _, err = run_cli(capsys, "check", str(res), "--baseline", bl)
        assert code == 2 and message in one_error_line(err), (message, err)


# --- --update -----------------------------------------------------------------------------------------


def test_update_writes_a_baseline_that_then_passes_and_keeps_row_tolerances(capsys, tmp_path) -> None:
    bl = baseline(tmp_path, base("onnx", "int8", 67.0, tolerance_pct=2.5), base("onnx", "fp16", 69.0))
    res = results(tmp_path, row("onnx", "fp32", 0.69, 1.0, 0.9999999), row("onnx", "int8", 0.655, 0.92, 0.99))
    code, out, _ = run_cli(capsys, "check", res, "--baseline", bl, "--update")
    assert code == 0 and "baseline written" in out and "dropped: repghostnet_050 onnx fp16" in out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temporary left
    doc = json.loads(Path(bl).read_text())
    rows = {(r["target"], r["precision"]): r for r in doc["rows"]}
    assert rows["onnx", "int8"] == {"model": MODEL, "target": "onnx", "precision": "int8", "top1_pct": 65.5,
                                    "count": 200, "tolerance_pct": 2.5, "min_top1_agreement": 0.895,
                                    "min_cosine": 0.98}
    assert rows["onnx", "fp32"]["min_top1_agreement"] == 0.995 and "tolerance_pct" not in rows["onnx", "fp32"]
    assert doc["data"] == "photos (200 images)"
    code, out, _ = run_cli(capsys, "check", res, "--baseline", bl)
    assert code == 0 and "PASS: 2 rows" in out
    code, _, err = run_cli(capsys, "check", res, "--baseline", write(tmp_path / "broken.json", "[1,"), "--update")
    assert code == 2 and "is not valid JSON" in one_error_line(err)


# --- the project's own gate catches a deliberately broken model ------------------------------------------


def perturbed_checkpoint(path: Path) -> Path:
    """The shipped model with 10% Gaussian noise on every conv weight: still runs, clearly less accurate."""
    obj = Checkpoint.open(defaults.default_model_path()).obj
    model, _ = load_model(MODEL, obj)
    model = model.float()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 4:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * 0.1)
    return save_checkpoint(path, model, model=MODEL, extra={k: obj["meta"][k] for k in ("input_size", "mean", "std",
                                                                                     "labels", "crop_pct")})


def project_rows(tmp_path: Path, target: str, precision: str) -> str:
    """The committed baseline, reduced to one row (the test evaluates one artifact, not the whole demo set)."""
    doc = json.loads(PROJECT_BASELINE.read_text())
    doc["rows"] = [r for r in doc["rows"] if (r["model"], r["target"], r["precision"]) == (MODEL, target, precision)]
    assert len(doc["rows"]) == 1, f"{PROJECT_BASELINE} has no {target} {precision} row"
    return write(tmp_path / f"{target}-{precision}.json", doc)


def test_shipped_checkpoint_passes_and_a_perturbed_one_fails_the_project_baseline(capsys, tmp_path) -> None:
    bl = project_rows(tmp_path, "torch", "fp32")
    for ckpt, expected in ((defaults.default_model_path(), 0), (perturbed_checkpoint(tmp_path / "noisy.pt"), 1)):
        code, _, _ = run_cli(capsys, "eval", str(ckpt), "-o", str(tmp_path / "r.json"))
        assert code == 0
        code, out, err = run_cli(capsys, "check", str(tmp_path / "r.json"), "--baseline", bl)
        assert code == expected, out + err
    assert "top-1 dropped" in err


def test_a_broken_onnx_export_fails_the_project_gate(capsys, tmp_path) -> None:
    """export -> eval -> check, as .ci/run does, on a perturbed model: exit 1 on top-1 and on agreement."""
    from edgerep.api import deploy
    from edgerep.export.pipeline import export

    noisy = perturbed_checkpoint(tmp_path / "noisy.pt")
    model, _ = load_model(MODEL, noisy)
    deployed, _ = deploy(model, name=MODEL, input_size=(3, 32, 32), latency=False)
    art = export(deployed, name=MODEL, target="onnx", precision="fp32", input_size=(3, 32, 32),
                 output_dir=tmp_path / "out", preprocess=defaults.default_preprocess(),
                 labels=Checkpoint.open(noisy).obj["meta"]["labels"], source=noisy, options={"exporter": "torchscript"})
    res = tmp_path / "results.json"
    code, _, _ = run_cli(capsys, "eval", str(art.artifact), "--reference", str(defaults.default_model_path()),
                     "-o", str(res))
    assert code == 0
    code, out, err = run_cli(capsys, "check", str(res), "--baseline", project_rows(tmp_path, "onnx", "fp32"))
    assert code == 1 and "FAIL: 1 of 1 rows regressed" in out
    assert "top-1 dropped" in err and "top-1 agreement" in err
