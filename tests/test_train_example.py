"""examples/train_cifar10.py, the recipe of the shipped models: it trains, saves a loadable checkpoint, resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from edgerep.checkpoints.load import load_model
from edgerep.defaults import default_images_dir

SCRIPT = Path(__file__).resolve().parents[1] / "examples/train_cifar10.py"


def _train(out: Path, epochs: int) -> subprocess.CompletedProcess:
    photos = str(default_images_dir())  # 200 labelled photos stand in for train and test: a smoke run
    cmd = [sys.executable, str(SCRIPT), "--model", "repvgg_a0_narrow", "--data", photos, "--test", photos,
           "--shipped", photos, "--epochs", str(epochs), "--batch-size", "64", "--threads", "1", "--out-dir", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_training_saves_a_train_form_checkpoint_with_its_recipe(tmp_path: Path) -> None:
    run = _train(tmp_path, epochs=1)
    assert run.returncode == 0, run.stderr[-2000:]
    recipe = json.loads((tmp_path / "repvgg_a0_narrow_cifar10.json").read_text())
    assert recipe["epochs"] == 1 and len(recipe["history"]) == 1 and recipe["data"]["train_images"] == 200
    model, info = load_model("repvgg_a0_narrow", tmp_path / "repvgg_a0_narrow_cifar10.pt")
    assert info.form == "train" and info.num_classes == 10
    assert not (tmp_path / "repvgg_a0_narrow_cifar10.resume.pt").exists()  # a finished run leaves no resume state


def test_an_interrupted_run_resumes_after_its_last_epoch(tmp_path: Path) -> None:
    assert _train(tmp_path, epochs=1).returncode == 0
    (tmp_path / "repvgg_a0_narrow_cifar10.json").unlink()
    # The state an interrupted 2-epoch run leaves after epoch 1: made by the script's own keep_state.
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_cifar10 as script
    finally:
        sys.path.remove(str(SCRIPT.parent))
    model, _ = load_model("repvgg_a0_narrow", tmp_path / "repvgg_a0_narrow_cifar10.pt")
    args = vars(script.parse_args(["--model", "repvgg_a0_narrow", "--data", str(default_images_dir()), "--epochs", "2",
                                   "--batch-size", "64"]))
    opt = script.make_optimizer(model, 0.2, 5e-4)
    history = [{"epoch": 1, "loss": 2.0, "train_top1": 0.1, "test_top1": 0.1, "seconds": 1.0}]
    script.keep_state(tmp_path / "repvgg_a0_narrow_cifar10.resume.pt", args, model, opt, torch.Generator(), history)
    run = _train(tmp_path, epochs=2)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resuming after epoch 1" in run.stdout and "epoch 1/2" not in run.stdout and "epoch 2/2" in run.stdout
    recipe = json.loads((tmp_path / "repvgg_a0_narrow_cifar10.json").read_text())
    assert len(recipe["history"]) == 2 and recipe["wall_seconds"]["resumed_after_epoch"] == 1
    assert recipe["wall_seconds"]["epochs"] == sum(h["seconds"] for h in recipe["history"])  # both runs' epochs


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A missing folder or an unknown model name: one line on stderr, exit 2, no traceback, nothing written."""
    for extra in (["--data", str(tmp_path / "missing")], ["--model", "no_such_model"]):
        cmd = [sys.executable, str(SCRIPT), "--epochs", "1", "--out-dir", str(tmp_path / "out"), *extra]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, run.stderr[-2000:]
        assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1
        assert not (tmp_path / "out").exists()
