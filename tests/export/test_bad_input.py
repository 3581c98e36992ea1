"""Issue 12's hostile and careless inputs, each kept as a test: exit 2 with one ``error:`` line (or a correct result),
no traceback, nothing of the user's lost, no empty folder left behind."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import locked_folder, one_error_line, run_cli

from edgerep import defaults
from edgerep.checkpoints import Checkpoint, load_model, save_checkpoint
from edgerep.errors import BadInputError
from edgerep.proof.numerics import randomize_bn
from edgerep.reparam import reparameterize
from edgerep.zoo import create_model

MODEL = "repghostnet_050"
SMALL = {"input_size": [3, 32, 32], "labels": [f"c{i}" for i in range(10)]}


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory) -> Path:
    model = randomize_bn(create_model(MODEL, num_classes=10), torch.Generator().manual_seed(0)).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "train.pt", model, model=MODEL, extra=SMALL)


def _error(err: str) -> str:
    """The run's one ``error:`` line, its last, after edgerep's own status lines (no traceback)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], err
    return lines[-1]


def _resave(src: Path, dst: Path, meta: dict | None = None, state: dict | None = None) -> Path:
    obj = Checkpoint.open(src).obj
    torch.save({**obj, "meta": {**obj["meta"], **(meta or {})}, "state_dict": {**obj["state_dict"], **(state or {})}},
               dst)
    return dst


# --- refused at parse time: exit 2 at once, one line -------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "--min-agreement", "2"], "not a fraction in [0, 1]"),
        (["export", "--min-agreement", "nan"], "not a finite number"),
        (["deploy", "--rtol", "nan"], "not a finite number"),
        (["deploy", "--rtol", "-1"], "must be a positive number"),
        (["export", "--target", ","], "names nothing"),
        (["export", "--precision", " , "], "names nothing"),
        (["bench", "--devices", ","], "names nothing"),
        (["profile", "x.onnx", "--rounds", "0"], "must be an integer >= 1"),
        (["validate", "x.onnx", "--random", "0"], "must be an integer >= 1"),
        (["validate", "x.onnx", "--min-agreement", "1.5"], "not a fraction"),
        (["eval", "--batch-size", "0"], "must be an integer >= 1"),
    ],
)
def test_bad_values_are_refused_before_any_work(capsys, argv, message) -> None:
    started = time.perf_counter()
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert message in line and f"see `edgerep {argv[0]} --help`" in line
    assert time.perf_counter() - started < 2.0  # nothing was loaded


# --- tracebacks that became one line -----------------------------------------------------------------------


def test_validate_of_a_file_that_is_not_onnx(capsys, tmp_path) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"this is not onnx")
    code, _, err = run_cli(capsys, "validate", str(tmp_path / "garbage.onnx"), "--random", "2")
    assert code == 2 and "cannot load" in one_error_line(err) and "garbage.onnx" in err


def test_eval_into_a_read_only_folder_fails_before_the_evaluation(capsys, tmp_path, monkeypatch) -> None:
    import edgerep.accuracy.evaluate as evaluate_mod
    import edgerep.fileio as fileio

    locked = tmp_path / "ro"
    locked.mkdir()
    real_access = os.access
    # Tests run as root, who may write anywhere: the read-only folder is simulated where edgerep asks the OS.
    monkeypatch.setattr(fileio.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking -o"))
    code, _, err = run_cli(capsys, "eval", "-o", str(locked / "results.json"))
    assert code == 2 and "not writable" in one_error_line(err)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"artifact": "x"}, "'artifact'"),
        ({"artifact": {"file": "m.onnx", "sha256": "0" * 64, "size_bytes": "big"}}, "'artifact'"),
        ({"labels": [1, 2, 3]}, "'labels'"),
        ({"preprocess": {"size": "abc"}}, "'preprocess'"),
        ({"input": {"shape": [1, 3, "x", 32], "layout": "sideways"}}, "'input'"),
    ],
    ids=["artifact-string", "size-not-a-number", "numeric-labels", "preprocess", "input-layout"],
)
def test_a_hand_edited_manifest_is_named_not_a_traceback(capsys, tmp_path, change, key) -> None:
    art = tmp_path / "m.onnx"
    art.write_bytes(b"never opened: the manifest is refused first")
    manifest = {"model": MODEL, "precision": "fp32", "target": "onnx",
                "preprocess": {"size": [32, 32], "resize": None, "mean": [0.5] * 3, "std": [0.5] * 3,
                               "interpolation": "bilinear"}} | change
    (tmp_path / "m.onnx.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "eval", str(art))
    line = one_error_line(err)
    assert code == 2 and "m.onnx.json" in line and key in line


def test_unreadable_calibration_folder_in_export(capsys, tmp_path, train_ckpt, monkeypatch) -> None:
    folder = locked_folder(monkeypatch, tmp_path / "photos")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", MODEL, "-c", str(train_ckpt), "--target", "onnx", "--precision", "int8",
                           "--calib", str(folder), "-o", str(out), "--json")
    assert code == 2 and "Permission denied" in one_error_line(err)
    assert not out.exists()  # case 10: the refused run leaves no empty -o folder


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"crop_pct": 0}, "crop_pct"),
        ({"input_size": "abc"}, "input_size"),
        ({"mean": ["a", "b", "c"]}, "mean"),
        ({"labels": 5}, "labels"),
    ],
)
def test_bad_checkpoint_meta_is_one_line(capsys, tmp_path, train_ckpt, meta, message) -> None:
    ck = _resave(train_ckpt, tmp_path / "bad.pt", meta=meta)
    code, _, err = run_cli(capsys, "eval", str(ck), "--no-reference")
    assert code == 2 and message in one_error_line(err) and "bad.pt" in err


# --- nothing of the user's lost ---------------------------------------------------------------------------


def test_deploy_never_writes_over_its_own_checkpoint(capsys, tmp_path, train_ckpt) -> None:
    ck = tmp_path / "ck.pt"
    shutil.copy(train_ckpt, ck)
    before = ck.read_bytes()
    code, _, err = run_cli(capsys, "deploy", "-c", str(ck), "-o", str(ck), "--no-images", "--no-latency", "--json")
    assert code == 2 and "replace the training checkpoint" in _error(err)
    assert ck.read_bytes() == before


def test_export_never_replaces_a_folder_of_the_users(tmp_path) -> None:
    from edgerep.export.pipeline import export

    mine = tmp_path / "tiny-fp32.onnx"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    model = reparameterize(create_model(MODEL, num_classes=10)).eval()
    with pytest.raises(BadInputError, match="not an edgerep artifact"):
        export(model, name="tiny", target="onnx", input_size=(3, 32, 32), output_dir=tmp_path,
               preprocess=defaults.default_preprocess())
    assert (mine / "notes.txt").read_text() == "mine"


def test_staging_left_by_a_killed_run_is_cleaned_after_an_hour(tmp_path) -> None:
    from edgerep.fileio import STAGING_PREFIX, remove_stale_staging

    old, new = tmp_path / f"{STAGING_PREFIX}export-old", tmp_path / f"{STAGING_PREFIX}export-new"
    for d in (old, new):
        d.mkdir()
        (d / "model.mlpackage").write_bytes(b"x" * 100)
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    remove_stale_staging(tmp_path)
    assert not old.exists() and new.exists()  # a concurrent run's fresh staging is left alone


# --- case 7: one true story about a checkpoint's form; NaN weights named ----------------------------------


def test_a_wrong_meta_form_gives_deploy_and_export_the_same_true_story(tmp_path, train_ckpt) -> None:
    ck = _resave(train_ckpt, tmp_path / "wrong.pt", meta={"form": "deploy"})  # the weights are the train form
    story = r"meta says form 'deploy' but its weights are the train form"
    with pytest.warns(UserWarning, match=story):
        _, info = load_model(MODEL, ck, form="train")  # what `edgerep deploy` asks
    assert info.form == "train"
    with pytest.warns(UserWarning, match=story):
        _, info = load_model(MODEL, ck)  # what `edgerep export` asks
    assert info.form == "train"


def test_a_nan_weight_is_named_not_reported_as_a_fusion_mismatch(capsys, tmp_path, train_ckpt) -> None:
    sd = Checkpoint.open(train_ckpt).obj["state_dict"]
    key = next(k for k, t in sd.items() if t.is_floating_point() and t.dim() == 4)
    bad = sd[key].clone()
    bad.view(-1)[3] = float("nan")
    ck = _resave(train_ckpt, tmp_path / "nan.pt", state={key: bad})
    code, _, err = run_cli(capsys, "deploy", "-c", str(ck), "--no-images", "--no-latency", "--json")
    line = _error(err)
    assert code == 2 and key in line and "NaN/Inf" in line and "fusion" not in line


# --- case 8: Ctrl-C names what was kept ---------------------------------------------------------------------


def test_ctrl_c_during_export_names_the_artifacts_kept(capsys, tmp_path, train_ckpt, monkeypatch) -> None:
    import edgerep.export.pipeline as pipeline

    class Done:
        artifact = tmp_path / "train-fp32.onnx"

    calls = []

    def export(*a, **k):
        calls.append(k["target"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return Done()

    monkeypatch.setattr(pipeline, "export", export)
    code, _, err = run_cli(capsys, "export", MODEL, "-c", str(train_ckpt), "--target", "onnx,tflite",
                           "-o", str(tmp_path), "--json")
    line = one_error_line(err)
    assert code == 2 and "interrupted; kept 1 finished and validated" in line and "train-fp32.onnx" in line
    assert "nothing was written" not in line


# --- case 1: export --val labels photos by the model's label names ---------------------------------------


def _photos(tmp_path: Path, names: dict[str, str]) -> Path:
    root = tmp_path / "val"
    for src, dst in names.items():
        shutil.copytree(defaults.default_images_dir() / src, root / dst)
    return root


def test_export_val_with_some_classes_matches_folders_to_labels_by_name(tmp_path) -> None:
    from edgerep.export.pipeline import _images

    labels = Checkpoint.open(defaults.default_model_path()).labels
    notes: list[str] = []
    x, _, truth = _images(_photos(tmp_path, {"cat": "cat", "dog": "dog"}), defaults.default_preprocess(),
                          "validation images", (labels, MODEL), notes)
    assert len(x) == len(truth) and set(truth.tolist()) == {labels.index("cat"), labels.index("dog")}
    assert not notes


def test_export_val_folder_that_is_not_a_label_is_named(capsys, tmp_path, train_ckpt) -> None:
    val = _photos(tmp_path, {"cat": "c3", "dog": "dgo"})  # the fixture's labels are c0..c9: dgo is a typo
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", MODEL, "-c", str(train_ckpt), "--target", "onnx", "--val", str(val),
                           "-o", str(out), "--json")
    assert code == 2 and "class folders dgo" in one_error_line(err)
    assert not out.exists()  # case 10: nothing kept, so the folder the run created is gone


def test_export_val_whose_folders_are_no_labels_still_validates_agreement(tmp_path) -> None:
    from edgerep.export.pipeline import _images

    notes: list[str] = []
    _, _, truth = _images(_photos(tmp_path, {"cat": "n02123045", "dog": "n02084071"}), defaults.default_preprocess(),
                          "validation images", (Checkpoint.open(defaults.default_model_path()).labels, MODEL), notes)
    assert truth is None and "accuracy not measured" in notes[0]


def test_bench_that_fails_leaves_no_empty_output_folder(capsys, tmp_path, monkeypatch) -> None:
    import edgerep.tradeoff.run as bench_run

    def refuse(*a, **k):
        raise BadInputError("refused for the test")

    monkeypatch.setattr(bench_run, "run_bench", refuse)
    out = tmp_path / "a" / "b"
    code, _, err = run_cli(capsys, "bench", "--no-plot", "-o", str(out))
    assert code == 2 and "refused for the test" in one_error_line(err)
    assert not (tmp_path / "a").exists()
