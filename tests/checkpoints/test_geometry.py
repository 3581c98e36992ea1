"""A checkpoint at its own geometry: input size, normalisation and labels from flags or a timm config.json.

The shipped model re-saved as a bare state dict has no meta, so the zoo's defaults (224 px, ImageNet statistics)
would be wrong for it; the flags (or a config.json beside it) must give back exactly the shipped model's results.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from edgerep import defaults
from edgerep.checkpoints import Checkpoint

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """The shipped train-form weights without any meta (as a plain training script saves them)."""
    d = tmp_path_factory.mktemp("bare")
    state = Checkpoint.open(defaults.default_model_path()).obj["state_dict"]
    torch.save({k: v.float() for k, v in state.items()}, d / "bare.pt")
    return d / "bare.pt"


def _flags() -> list[str]:
    pre = defaults.default_preprocess()
    return ["--input-size", "32", "--mean", ",".join(map(str, pre.mean)), "--std", ",".join(map(str, pre.std)),
            "--labels", ",".join(CLASSES)]


def test_flags_give_the_checkpoint_its_own_geometry_through_export_and_eval(capsys, bare, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", "repghostnet_050", "-c", str(bare), "--target", "onnx",
                           "--precision", "fp32", "-o", str(out), "--images", str(defaults.default_images_dir()),
                           "--json", *_flags())
    assert code == 0, err
    manifest = json.loads((out / "repghostnet_050-fp32.onnx.json").read_text())
    assert manifest["input"]["shape"] == [1, 3, 32, 32] and manifest["labels"] == CLASSES
    assert manifest["preprocess"]["mean"] == list(defaults.default_preprocess().mean)

    code, stdout, err = run_cli(capsys, "eval", str(out / "repghostnet_050-fp32.onnx"), str(bare),
                                "--model", "repghostnet_050", "--json", *_flags())
    assert code == 0, err
    top1 = {r["target"]: r["top1"] for r in json.loads(stdout)["results"]}
    code, stdout, _ = run_cli(capsys, "eval", "--json")  # the shipped checkpoint, with its own meta
    shipped = json.loads(stdout)["results"][0]["top1"]
    assert top1["onnx"] == top1["torch"] == shipped > 0.5


def test_a_timm_config_json_beside_the_checkpoint_is_read(tmp_path, bare):
    pre = defaults.default_preprocess()
    (tmp_path / "bare.pt").write_bytes(bare.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "repghostnet_050", "pretrained_cfg": {
        "input_size": [3, 32, 32], "mean": list(pre.mean), "std": list(pre.std), "crop_pct": 1.0,
        "interpolation": "bilinear", "label_names": CLASSES}}))
    ck = Checkpoint.open(tmp_path / "bare.pt")
    assert ck.preprocess("repghostnet_050") == pre and ck.labels == CLASSES
    assert Checkpoint.open(tmp_path / "bare.pt", {"input_size": [3, 48, 48]}).preprocess("repghostnet_050").size \
        == (48, 48), "the user's flags win over the file"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mean", "0.5,0.5"], "3 numbers"),
        (["--std", "a,b,c"], "not a number"),
        (["--input-size", "0"], "not a size"),
        (["--input-size", "32x"], "not a size"),
        (["--labels", ",".join(CLASSES + ["extra"])], "11 labels for repghostnet_050"),
        (["--crop-pct", "2"], "fraction"),
    ],
)
def test_bad_geometry_is_one_line_and_exit_2(capsys, bare, tmp_path, flags, message):
    code, _, err = run_cli(capsys, "deploy", "repghostnet_050", "-c", str(bare), "--no-latency", "--no-images", *flags)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]  # after deploy's status line, if any
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and message in errors[0]


def test_an_input_size_the_architecture_cannot_take(capsys, tmp_path):
    """RepVGG's global pool needs at least one pixel after five stride-2 stages' padding: 1x1 still works, so the
    refusal is shown on a classifier whose pooling is a fixed 7x7 window."""
    from edgerep.checkpoints import check_geometry
    from edgerep.zoo import create_model

    model = create_model("repghostnet_050", num_classes=10).eval()
    model.global_pool = torch.nn.AvgPool2d(7)  # a fixed window: inputs under 7x7 after the stem are refused
    ck = Checkpoint(tmp_path / "x.pt", {}, "0" * 64, {"input_size": [3, 16, 16]})
    with pytest.raises(Exception, match="cannot take a 16x16 input"):
        check_geometry(model, ck, "repghostnet_050", 10)
