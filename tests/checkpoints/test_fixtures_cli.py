"""Checkpoints saved by timm and by the original repositories reproduce their sources' outputs via the CLI."""

import json

import pytest
from conftest import REL_TOL_FP32, shared_path

from edgerep.cli import main

FIXTURES = {
    "timm_repvgg_a0.pt": ("repvgg_a0", "timm"),
    "official_repvgg_a0.pt": ("repvgg_a0", "original"),
    "timm_repghostnet_050.pt": ("repghostnet_050", "timm"),
    "timm_mobileone_s0.pt": ("mobileone_s0", "timm"),
}


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_fixture_reproduces_source_outputs(capsys, tmp_path, fixture):
    path = shared_path("fixtures", "checkpoints", fixture)
    model, layout = FIXTURES[fixture]
    out = tmp_path / "deploy.pt"
    code = main(["deploy", model, "-c", str(path), "-o", str(out), "--no-latency", "--no-images", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"] and result["layout"] == layout
    checks = {(c["form"], c["reference"]): c for c in result["report"]["checks"]}
    for form in ("train", "deploy"):
        for ref in ("source train output", "source deploy output"):
            c = checks[(form, ref)]
            assert c["rel"] <= REL_TOL_FP32, (fixture, form, ref, c["rel"])
    assert out.exists()
    # the written deploy checkpoint is recognised as such and refused as a train-form input
    assert main(["deploy", model, "-c", str(out), "--no-latency", "--no-images"]) == 2
