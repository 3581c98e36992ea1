"""edgerep eval: accuracy of checkpoints and artifacts on real photos, agreement with fp32, and its bad input.

Artifacts are exported from a tiny conv net (seconds, not minutes, on a loaded 2-core host); the shipped
model is evaluated as a checkpoint, which needs no export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line, run_cli
from torch import nn

from edgerep import defaults
from edgerep.accuracy.evaluate import Reference, Subject, evaluate, open_data, open_subject
from edgerep.checkpoints import Checkpoint, load_model, save_checkpoint
from edgerep.cli import main
from edgerep.errors import BadInputError
from edgerep.export.pipeline import export
from edgerep.images import load_images
from edgerep.reparam import reparameterize

LABELS = defaults.default_recipe()["data"]["classes"]
PRE = defaults.default_preprocess()
# 11 photos of 3 classes: not a multiple of the ONNX artifact's fixed batch of 3, and a subset of the 10 labels
SUBSET = {"airplane": 4, "cat": 4, "dog": 3}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for cls, n in SUBSET.items():
        (root / cls).mkdir()
        for f in sorted((defaults.default_images_dir() / cls).iterdir())[:n]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.fixture(scope="module")
def truth(photos) -> tuple[torch.Tensor, torch.Tensor]:
    """The photos preprocessed, and their labels as indices of the model's 10 labels (matched by name)."""
    batch = load_images(photos, PRE)
    names = sorted(SUBSET)
    return batch.images, torch.tensor([LABELS.index(names[i]) for i in batch.labels])


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny) -> dict[str, Path]:
    """The tiny net as ONNX (fixed batch 3) and as TFLite with channels-last input (fixed batch 1)."""
    out = tmp_path_factory.mktemp("artifacts")
    onnx = export(tiny, name="tiny", target="onnx", input_size=(3, 32, 32), output_dir=out, preprocess=PRE,
                  labels=LABELS, batch=3, options={"exporter": "torchscript"})
    found = {"onnx": onnx.artifact}
    if _has("litert_torch") and _has("ai_edge_litert"):
        tfl = export(tiny, name="tiny", target="tflite", input_size=(3, 32, 32), output_dir=out, preprocess=PRE,
                     labels=LABELS, input_layout="nhwc")
        found["tflite"] = tfl.artifact
    return found


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def torch_reference(net: nn.Module) -> Reference:
    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(x)).numpy()

    return Reference(Subject("tiny", "torch", "fp32", Path("tiny.pt"), PRE, (3, 32, 32), predict, LABELS))


def expected_top1(net: nn.Module, truth) -> float:
    x, y = truth
    with torch.no_grad():
        return (net(x).argmax(1) == y).double().mean().item()


# --- checkpoints ------------------------------------------------------------------------------------


def test_shipped_checkpoint_scores_the_accuracy_its_recipe_records() -> None:
    result = evaluate(open_subject(defaults.default_model_path()), open_data(defaults.default_images_dir()))
    assert result.count == 200 and result.target == "torch" and result.form == "train"
    assert result.top1 == pytest.approx(defaults.default_recipe()["top1"]["shipped_fp16"])
    assert result.top1 < result.top5 <= 1.0
    assert result.agreement is None and "by name" in result.labels


def test_deploy_form_checkpoint_agrees_with_the_train_form(photos, tmp_path) -> None:
    train = open_subject(defaults.default_model_path())
    obj = Checkpoint.open(defaults.default_model_path()).obj
    model, _ = load_model("repghostnet_050", obj)
    meta = {k: v for k, v in obj["meta"].items() if k in ("input_size", "mean", "std", "labels", "crop_pct")}
    path = save_checkpoint(tmp_path / "deploy.pt", reparameterize(model.float()), model="repghostnet_050", extra=meta)
    data = open_data(photos)
    deployed = evaluate(open_subject(path), data, reference=Reference(train))
    assert deployed.form == "deploy"
    assert deployed.top1 == evaluate(train, data).top1
    a = deployed.agreement
    assert a.top1 == 1.0 and a.cosine > 0.999999 and a.kl < 1e-6 and a.reference_top1 == deployed.top1


# --- artifacts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_artifact_accuracy_and_agreement_through_its_runtime(target, artifacts, photos, truth, tiny) -> None:
    if target not in artifacts:
        pytest.skip(f"{target} runtime not installed")
    subject = open_subject(artifacts[target])
    assert subject.input_shape == (3, 32, 32) and subject.batch == (3 if target == "onnx" else 1)
    result = evaluate(subject, open_data(photos), reference=torch_reference(tiny), batch_size=4)
    assert result.count == sum(SUBSET.values()) and (result.target, result.precision) == (target, "fp32")
    assert result.top1 == pytest.approx(expected_top1(tiny, truth))
    assert result.agreement.top1 == 1.0 and result.agreement.cosine > 0.99999
    assert result.size_bytes == artifacts[target].stat().st_size


@pytest.mark.slow  # coremltools' import and conversion alone take ~40 s on a loaded 2-core host
def test_coreml_artifact_through_its_program(photos, truth, tiny, tmp_path) -> None:
    pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'edgerep[coreml]')")
    art = export(tiny, name="tiny", target="coreml", input_size=(3, 32, 32), output_dir=tmp_path, preprocess=PRE,
                 labels=LABELS)
    subject = open_subject(art.artifact)
    assert subject.batch == 1 and subject.input_shape == (3, 32, 32)
    result = evaluate(subject, open_data(photos), reference=torch_reference(tiny))
    assert result.top1 == pytest.approx(expected_top1(tiny, truth)) and result.agreement.top1 == 1.0


def test_agreement_needs_no_labels(artifacts, photos, tmp_path, tiny) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in photos.rglob("*.jpg"):
        shutil.copy(f, flat / f"{f.parent.name}-{f.name}")
    result = evaluate(open_subject(artifacts["onnx"]), open_data(flat), reference=torch_reference(tiny))
    assert result.top1 is None and result.top5 is None and result.count == sum(SUBSET.values())
    assert result.agreement.top1 == 1.0 and result.agreement.reference_top1 is None


def test_npz_of_raw_pixels_scores_like_the_folder(artifacts, photos, truth, tmp_path, tiny) -> None:
    files = sorted(photos.rglob("*.jpg"))
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([LABELS.index(f.parent.name) for f in files])
    np.savez(tmp_path / "set.npz", images=pixels, labels=labels)
    np.savez(tmp_path / "nolabels.npz", images=pixels)
    subject = open_subject(artifacts["onnx"])
    labelled = evaluate(subject, open_data(tmp_path / "set.npz"))
    assert labelled.top1 == pytest.approx(expected_top1(tiny, truth)) and labelled.labels == "npz label indices"
    unlabelled = evaluate(subject, open_data(tmp_path / "nolabels.npz"), reference=torch_reference(tiny))
    assert unlabelled.top1 is None and unlabelled.agreement.top1 == 1.0
    np.savez(tmp_path / "bad.npz", images=pixels, labels=labels + 10)
    with pytest.raises(BadInputError, match="labels .* run from 10 to"):
        evaluate(subject, open_data(tmp_path / "bad.npz"))


# --- the command ------------------------------------------------------------------------------------


def test_cli_evaluates_a_folder_of_artifacts_into_one_table_and_json(capsys, artifacts, photos, tmp_path) -> None:
    folder = artifacts["onnx"].parent
    code, out, _ = run_cli(capsys, "eval", str(folder), "--images", str(photos))
    assert code == 0
    for p in artifacts.values():
        assert p.name in out
    assert "agree top-1" in out and "class folders" in out

    results = tmp_path / "results.json"
    # a manifest stands for its artifact: a shell glob over the folder evaluates each artifact once
    globbed = sorted(str(p) for p in folder.iterdir())
    code, out, _ = run_cli(capsys, "eval", *globbed, "--images", str(photos), "--json", "-o", str(results))
    assert code == 0
    doc = json.loads(out)
    assert doc == json.loads(results.read_text())
    assert doc["kind"] == "edgerep.eval" and len(doc["results"]) == len(artifacts)
    assert {r["target"] for r in doc["results"]} == set(artifacts)
    assert all(r["count"] == sum(SUBSET.values()) for r in doc["results"])


def test_cli_reference_gives_agreement_of_a_checkpoint(capsys, photos, tmp_path) -> None:
    ship = str(defaults.default_model_path())
    code, out, _ = run_cli(capsys, "eval", ship, "--images", str(photos), "--reference", ship, "--json")
    assert code == 0
    row = json.loads(out)["results"][0]
    assert row["agreement"]["top1"] == 1.0 and row["agreement"]["reference_top1"] == row["top1"]


# --- bad input: exit 2, one line ----------------------------------------------------------------------


def test_empty_or_unreadable_data_is_one_line(capsys, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "eval", "--images", str(tmp_path / "empty"), "--json")
    assert code == 2 and "contains no images" in one_error_line(err)
    broken = tmp_path / "broken" / "cat"
    broken.mkdir(parents=True)
    (broken / "0000.jpg").write_bytes(b"not a jpeg")
    code, _, err = run_cli(capsys, "eval", "--images", str(tmp_path / "broken"), "--json")
    assert code == 2 and "cannot read image" in one_error_line(err) and "0000.jpg" in err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "eval", "--images", str(tmp_path / "bad.npz"), "--json")
    assert code == 2 and "cannot read npz" in one_error_line(err)


def test_class_folders_that_are_not_labels_are_named(capsys, photos, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(photos, data)
    shutil.copytree(photos / "cat", data / "zebra")
    shutil.copytree(photos / "dog", data / "Dog")
    code, _, err = run_cli(capsys, "eval", "--images", str(data), "--json")
    line = one_error_line(err)
    assert code == 2 and "Dog, zebra" in line and "not labels of repghostnet_050" in line


def test_artifact_whose_input_does_not_match_the_data(capsys, artifacts, photos, tmp_path) -> None:
    bare = tmp_path / "model-fp32.onnx"
    shutil.copy(artifacts["onnx"], bare)  # no manifest: preprocessing from the zoo spec (224 px)
    code, _, err = run_cli(capsys, "eval", str(bare), "--model", "repghostnet_050", "--images", str(photos), "--json")
    line = one_error_line(err)
    assert code == 2 and "takes input 3x32x32" in line and "3x224x224" in line
    code, _, err = run_cli(capsys, "eval", str(bare), "--images", str(photos), "--json")
    assert code == 2 and "has no manifest" in one_error_line(err)
    np.savez(tmp_path / "small.npz", images=np.zeros((2, 3, 16, 16), np.float32))
    code, _, err = run_cli(capsys, "eval", str(artifacts["onnx"]), "--images", str(tmp_path / "small.npz"), "--json")
    assert code == 2 and "(16, 16)" in one_error_line(err)


def test_stale_manifest_and_wrong_reference_are_refused(capsys, artifacts, photos, tmp_path) -> None:
    art = tmp_path / artifacts["onnx"].name
    shutil.copy(artifacts["onnx"], art)
    man = json.loads(Path(f"{artifacts['onnx']}.json").read_text())
    man["artifact"]["sha256"] = "0" * 64
    Path(f"{art}.json").write_text(json.dumps(man))
    code, _, err = run_cli(capsys, "eval", str(art), "--images", str(photos), "--json")
    assert code == 2 and "describes another file" in one_error_line(err)
    code, _, err = run_cli(capsys, "eval", "--reference", str(artifacts["onnx"]), "--images", str(photos), "--json")
    assert code == 2 and "is an exported artifact" in one_error_line(err)
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "nope.onnx"), "--json")
    assert code == 2 and "does not exist" in one_error_line(err)
    (tmp_path / "cut.onnx").write_bytes(artifacts["onnx"].read_bytes()[:100])
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "cut.onnx"), "--model", "repghostnet_050", "--json")
    assert code == 2 and "cannot load" in one_error_line(err) and "cut.onnx" in err
    with pytest.raises(BadInputError, match="takes input"):
        evaluate(open_subject(artifacts["onnx"]), open_data(photos), reference=_reference_224())


def _reference_224() -> Reference:
    """A reference model fed 224-px images: its input does not match a 32-px artifact."""
    net = nn.Identity()
    return Reference(Subject("big", "torch", "fp32", Path("big.pt"), PRE, (3, 224, 224), lambda x: net(x), LABELS))


def test_sensitivity_takes_one_checkpoint(capsys):
    from edgerep.defaults import default_model_path

    ck = default_model_path()
    other = ck.with_name("repvgg_a0_narrow_cifar10.pt")
    assert main(["eval", "--sensitivity", str(ck), str(other)]) == 2
    assert "--sensitivity takes one PyTorch checkpoint" in capsys.readouterr().err
