"""Checkpoint layouts, forms and loading: real fixtures from timm and the original repo, plus every error.

Error tests use state dicts of a model built once per module (and meta-device state dicts where only
shapes matter), not the big fixture files.
"""

import re

import pytest
import torch
from conftest import REL_TOL_FP32, REL_TOL_FP64, meta_model, shared_path

from edgerep.checkpoints.layouts import detect_form, detect_layout, get_layout
from edgerep.checkpoints.load import LoadInfo, load_model, save_checkpoint
from edgerep.errors import BadInputError, CheckpointError
from edgerep.fileio import sha256_path
from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import count_blocks, reparameterize
from edgerep.zoo import create_model, list_models


def to_original(sd: dict) -> dict:
    """DingXiaoH/RepVGG naming, written independently of the loader's rules (the inverse mapping)."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^stem\.", "stage0.", key)
        key = re.sub(r"^stages\.(\d+)\.", lambda m: f"stage{int(m[1]) + 1}.", key)
        for ours, theirs in (("conv_kxk", "rbr_dense"), ("conv_1x1", "rbr_1x1"), ("identity", "rbr_identity"),
                             ("reparam_conv", "rbr_reparam")):
            key = key.replace(f"{ours}.", f"{theirs}.")
        out[re.sub(r"^head\.fc\.", "linear.", key)] = value
    return out


@pytest.fixture(scope="module")
def a0():
    model = create_model("repvgg_a0", num_classes=10)
    randomize_bn(model, torch.Generator().manual_seed(0))
    return model.eval()


@pytest.fixture(scope="module")
def a0_deployed(a0):
    return reparameterize(a0)


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# --- real checkpoints of other projects --------------------------------------------------------


@pytest.mark.parametrize(("fixture", "layout"), [("timm_repvgg_a0.pt", "timm"), ("official_repvgg_a0.pt", "original")])
def test_fixture_computes_what_its_source_computes(fixture, layout):
    path = shared_path("fixtures", "checkpoints", fixture)
    ref = torch.load(path, weights_only=True)
    auto, info = load_model("repvgg_a0", path)
    assert info == LoadInfo(path, sha256_path(path), layout, "train", 1000, "repvgg_a0")
    explicit, info2 = load_model("repvgg_a0", path, layout=layout, form="train")
    assert info2 == info and not auto.training
    with torch.no_grad():
        out = auto(ref["input"])
        torch.testing.assert_close(explicit(ref["input"]), out, rtol=0, atol=0)
        assert output_error(ref["output_train"], out).rel <= REL_TOL_FP32
        deployed = reparameterize(auto)
        assert count_blocks(deployed) == {}
        assert output_error(ref["output_deploy"], deployed(ref["input"])).rel <= REL_TOL_FP32


@pytest.mark.parametrize(("name", "fixture"), [("mobileone_s0", "timm_mobileone_s0.pt"),
                                               ("repghostnet_050", "timm_repghostnet_050.pt")])
def test_other_families_load_through_the_timm_layout(name, fixture):
    """No per-family code: identity names, form from the keys or, failing markers, from the model."""
    if name not in list_models():
        pytest.skip(f"{name} is not in the zoo")
    path = shared_path("fixtures", "checkpoints", fixture)
    ref = torch.load(path, weights_only=True)
    model, info = load_model(name, path)
    assert (info.layout, info.form, info.num_classes) == ("timm", "train", 1000)
    with torch.no_grad():
        assert output_error(ref["output_train"], model(ref["input"])).rel <= REL_TOL_FP32
        deploy_sd = reparameterize(model).state_dict()
        again, info = load_model(name, deploy_sd)
        assert info.form == "deploy" and count_blocks(again) == {}
        assert output_error(ref["output_deploy"], again(ref["input"])).rel <= REL_TOL_FP32


# --- layouts by structure ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models("repvgg") + list_models("qarepvgg"))
def test_original_layout_maps_every_variant(name):
    sd = meta_model(name).state_dict()
    original = to_original(sd)
    assert detect_layout(original, "repvgg") == "original" and detect_layout(sd) == "timm"
    assert detect_form(original) == "train"
    renamed, origin = get_layout("original", "repvgg").rename(original)
    assert list(renamed) == list(sd) and all(renamed[k].shape == sd[k].shape for k in sd)
    assert origin["head.fc.weight"] == "linear.weight"


def test_original_deploy_form_nested_and_prefixed(a0, a0_deployed):
    """A DataParallel-saved original deploy checkpoint nested under 'model' loads as deploy form."""
    sd = to_original(a0_deployed.state_dict())
    assert "stage0.rbr_reparam.weight" in sd and detect_form(sd) == "deploy"
    wrapped = {"epoch": 90, "model": {f"module.{k}": v for k, v in sd.items()}}
    model, info = load_model("repvgg_a0", wrapped)
    assert (info.path, info.sha256, info.layout, info.form, info.num_classes) == (None, None, "original", "deploy", 10)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), a0_deployed(x), rtol=0, atol=0)
        assert output_error(a0(x), model(x)).rel <= REL_TOL_FP32


def test_checkpoint_without_num_batches_tracked_loads(a0):
    sd = {k: v for k, v in a0.state_dict().items() if not k.endswith("num_batches_tracked")}
    model, info = load_model("repvgg_a0", sd)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), a0(x), rtol=0, atol=0)


# --- edgerep's own files -------------------------------------------------------------------------


def test_deploy_checkpoint_round_trip(tmp_path, a0, a0_deployed):
    path = save_checkpoint(tmp_path / "out" / "a0_deploy.pt", a0_deployed, model="repvgg_a0", extra={"note": "x"})
    assert [p.name for p in path.parent.iterdir()] == ["a0_deploy.pt"], "no temporary file left behind"
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "edgerep.checkpoint" and raw["version"] == 1
    assert raw["meta"] | {"edgerep": None} == {"model": "repvgg_a0", "form": "deploy", "num_classes": 10,
                                               "layout": "timm", "edgerep": None, "note": "x"}
    assert detect_layout(raw) == "edgerep" and detect_form(raw) == "deploy"
    model, info = load_model("repvgg_a0", path)
    assert info == LoadInfo(path, sha256_path(path), "edgerep", "deploy", 10, "repvgg_a0")
    assert load_model("repvgg_a0", path, layout="timm")[1].layout == "timm", "edgerep files are timm-named"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), a0_deployed(x), rtol=0, atol=0)
    save_checkpoint(tmp_path / "again.pt", a0_deployed, model="repvgg_a0", extra={"note": "x"})
    assert sha256_path(tmp_path / "again.pt") == info.sha256, "same weights, same bytes"


def test_failed_save_leaves_the_old_file(tmp_path, a0, monkeypatch):
    path = save_checkpoint(tmp_path / "a0.pt", a0, model="repvgg_a0")
    before = sha256_path(path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left") as exc:
        save_checkpoint(path, reparameterize(a0), model="repvgg_a0")
    one_line_error(exc)
    assert sha256_path(path) == before and [p.name for p in tmp_path.iterdir()] == ["a0.pt"]


# --- errors: one line, with the fix ---------------------------------------------------------------


def test_wrong_layout(a0):
    with pytest.raises(CheckpointError, match=r"in the original layout \(keys like stage0\.") as exc:
        load_model("repvgg_a0", to_original(a0.state_dict()), layout="timm")
    assert "--checkpoint-layout original" in one_line_error(exc)
    with pytest.raises(CheckpointError, match="not an edgerep file.*--checkpoint-layout timm") as exc:
        load_model("repvgg_a0", a0.state_dict(), layout="edgerep")
    one_line_error(exc)
    with pytest.raises(CheckpointError, match="unknown checkpoint layout 'keras'.*original") as exc:
        load_model("repvgg_a0", a0.state_dict(), layout="keras")
    one_line_error(exc)


def test_deploy_checkpoint_asked_as_train(a0_deployed):
    sd = to_original(a0_deployed.state_dict())
    with pytest.raises(CheckpointError, match=r"is in deploy form \(has fused keys such as stage0\.rbr_reparam") as e:
        load_model("repvgg_a0", sd, form="train")
    assert "already fused" in one_line_error(e) and "form='deploy'" in str(e.value)


def test_train_checkpoint_asked_as_deploy(a0):
    with pytest.raises(CheckpointError, match="is in train form .*edgerep deploy") as exc:
        load_model("repvgg_a0", a0.state_dict(), form="deploy")
    one_line_error(exc)


def test_missing_keys(a0):
    sd = {k: v for k, v in a0.state_dict().items() if not k.startswith("stages.3.")}
    with pytest.raises(CheckpointError, match=r"does not fit repvgg_a0: 10 missing \(stages\.3\.0\.conv_kxk") as exc:
        load_model("repvgg_a0", sd)
    assert ", ... +7" in one_line_error(exc)


def test_unexpected_keys_are_named_as_in_the_checkpoint(a0):
    sd = to_original(a0.state_dict()) | {"stage4.0.se.down.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"1 unexpected \(stage4\.0\.se\.down\.weight\)") as exc:
        load_model("repvgg_a0", sd)
    one_line_error(exc)


def test_shape_mismatch_suggests_the_model_that_fits():
    sd = meta_model("repvgg_a1").state_dict()  # shapes are all the check needs
    with pytest.raises(CheckpointError, match="with another shape .*did you mean repvgg_a1\\?") as exc:
        load_model("repvgg_a0", sd)
    assert "stem.conv_kxk.conv.weight (64, 3, 3, 3) vs model (48, 3, 3, 3)" in one_line_error(exc)


def test_unknown_model_and_form(a0):
    with pytest.raises(BadInputError, match="unknown model 'repvgg_a9'.*did you mean") as exc:
        load_model("repvgg_a9", a0.state_dict())
    one_line_error(exc)
    with pytest.raises(BadInputError, match="unknown form 'fused'") as exc:
        load_model("repvgg_a0", a0.state_dict(), form="fused")
    one_line_error(exc)


def test_half_converted_checkpoint(a0, a0_deployed):
    sd = a0.state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("stem.")} | {
        k: v for k, v in a0_deployed.state_dict().items() if k.startswith("stem.")
    }
    with pytest.raises(CheckpointError, match="half converted") as exc:
        load_model("repvgg_a0", sd)
    one_line_error(exc)


def test_edgerep_file_of_another_model(tmp_path, a0):
    path = save_checkpoint(tmp_path / "a0.pt", a0, model="repvgg_a0")
    with pytest.raises(CheckpointError, match="saved from repvgg_a0, not repvgg_a1; pass repvgg_a0") as exc:
        load_model("repvgg_a1", path)
    one_line_error(exc)


def test_truncated_file_is_named(tmp_path, a0):
    path = save_checkpoint(tmp_path / "broken.pt", a0, model="repvgg_a0")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = "broken.pt is not a readable PyTorch checkpoint .*corrupt, truncated"
    with pytest.raises(CheckpointError, match=message) as exc:
        load_model("repvgg_a0", path)
    one_line_error(exc)


@pytest.mark.parametrize("variant", ["s0", pytest.param("s4", marks=pytest.mark.slow)])
def test_original_mobileone_checkpoint_loads_and_fuses(variant):
    """apple/ml-mobileone keys (stage0.rbr_conv.0.conv.weight, rbr_scale, rbr_skip, se, linear), random weights."""
    from original_mobileone import OriginalMobileOne

    torch.manual_seed(0)
    original = randomize_bn(OriginalMobileOne(variant, num_classes=10)).eval()
    sd = original.state_dict()
    assert "stage0.rbr_conv.0.conv.weight" in sd and detect_layout(sd, "mobileone") == "original"
    model, info = load_model(f"mobileone_{variant}", sd)
    assert (info.layout, info.form, info.num_classes) == ("original", "train", 10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        if variant == "s0":  # S4 with random BN statistics is ill-conditioned in fp32 (see test_zoo_deploy.py)
            ref = original(x)
            assert output_error(ref, model(x)).rel <= REL_TOL_FP32
            assert output_error(ref, reparameterize(model)(x)).rel <= REL_TOL_FP32
        ref, x = original.double()(x.double()), x.double()
        assert output_error(ref, model.double()(x)).rel <= REL_TOL_FP64
        assert output_error(ref, reparameterize(model)(x)).rel <= REL_TOL_FP64
