"""The generic pass against the block-aware conversion on every zoo model and every checkpoint fixture.

Outputs must match the train form (fp64: the math; fp32 <= 1e-5 except the one model that is ill-conditioned
in fp32 by itself). Node counts: on models made only of re-param blocks (RepVGG, QARepVGG, MobileOne) the
generic result has exactly the block-aware graph. Elsewhere it folds more, because it knows no block: every
conv -> BN outside a block too (RepGhostNet's primary/shortcut BNs that timm's deploy layout keeps, ResNet and
MobileNetV2 BNs, a 1x1 projection into the next 1x1 expansion). There it must equal the block-aware result
after the same folding: ``generic(train) == generic(block_aware(train))``.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from conftest import ILL_CONDITIONED_FP32, REL_TOL_FP32, REL_TOL_FP64, shared_path

from edgerep.checkpoints import Checkpoint
from edgerep.checkpoints.load import load_model
from edgerep.cli import main
from edgerep.proof.metrics import count_nodes
from edgerep.proof.numerics import randomize_bn
from edgerep.reparam import generic, reparameterize
from edgerep.zoo import get_spec, list_models

generic_pass = functools.partial(generic.generic_pass, graph="fx")  # node counts in module terms; ATen: test_generic_aten
BLOCKS_ONLY = {"repvgg", "qarepvgg", "mobileone"}
QUICK = ["mobileone_s0", "repghostnet_050", "resnet18_dbb"]
# Where merging branch sets only (fold_chains=False) is not the block-aware graph node for node: the ResNet variants'
# converted convs are followed by the ResNet's own BN, which a merged set takes in; MobileOne-S1..S4 have blocks
# with a single conv+BN branch and no sum, which the block fuses and a sets-only pass leaves by definition.
SETS_ONLY_DIFFERS = {"resnet18_acb", "resnet18_dbb", "resnet18_cmb", "resnet18_refconv",
                     "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4"}
FIXTURES = {
    "timm_repvgg_a0.pt": "repvgg_a0",
    "official_repvgg_a0.pt": "repvgg_a0",
    "timm_repghostnet_050.pt": "repghostnet_050",
    "timm_mobileone_s0.pt": "mobileone_s0",
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def compare(model: torch.nn.Module, family: str, x: torch.Tensor) -> dict:
    """Generic vs block-aware on one eval-mode model: errors against the train form, and node counts."""
    generic, report = generic_pass(model, x[:1])
    block = reparameterize(model)
    with torch.no_grad():
        ref = model(x)
        out = {"rel_generic": _rel(generic(x), ref), "rel_block": _rel(block(x), ref)}
        m64, x64 = model.double(), x.double()
        out["rel_generic_fp64"] = _rel(generic_pass(m64, x64[:1])[0](x64), m64(x64))
        model.float()
    out["nodes_generic"] = dict(count_nodes(generic))
    out["nodes_block"] = dict(count_nodes(block))
    out["nodes_block_then_generic"] = dict(count_nodes(generic_pass(block, x[:1])[0]))
    out["nodes_generic_sets_only"] = dict(count_nodes(generic_pass(model, x[:1], fold_chains=False)[0]))
    out["report"] = report.summary()
    return out


def _check_nodes(r: dict, family: str, name: str) -> None:
    if family in BLOCKS_ONLY:
        assert r["nodes_generic"] == r["nodes_block"], r
    if name not in SETS_ONLY_DIFFERS:  # merging branch sets only is the block-aware conversion, node for node
        assert r["nodes_generic_sets_only"] == r["nodes_block"], r
    assert r["nodes_generic"] == r["nodes_block_then_generic"], r
    assert sum(r["nodes_generic"].values()) <= sum(r["nodes_block"].values()), r


def _check_zoo(name: str) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = randomize_bn(spec.factory(num_classes=10)).eval()
    r = compare(model, spec.family, torch.randn(2, 3, 64, 64))
    print(json.dumps({"model": name, **r}))  # the sweep's table: pytest -m slow -s tests/reparam/test_generic_zoo.py
    assert r["rel_generic_fp64"] <= REL_TOL_FP64, r
    if name not in ILL_CONDITIONED_FP32:
        assert r["rel_generic"] <= REL_TOL_FP32, r
    _check_nodes(r, spec.family, name)


@pytest.mark.parametrize("name", QUICK)
def test_zoo_model_generic_matches_block_aware(name):
    _check_zoo(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n not in QUICK])
def test_every_other_zoo_model_generic_matches_block_aware(name):
    _check_zoo(name)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_fixture_generic_reproduces_source_outputs(fixture):
    obj = Checkpoint.open(shared_path("fixtures", "checkpoints", fixture)).obj
    name = FIXTURES[fixture]
    model, _ = load_model(name, obj, form="train")
    model.eval()
    x = obj["input"].float()
    generic, _ = generic_pass(model, x[:1])
    with torch.no_grad():
        out = generic(x)
    rel = {key: _rel(out, obj[key].float()) for key in ("output_train", "output_deploy")}
    block = reparameterize(model)
    nodes = dict(count_nodes(generic))
    print(json.dumps({"fixture": fixture, **rel, "nodes_generic": nodes, "nodes_block": dict(count_nodes(block))}))
    assert max(rel.values()) <= REL_TOL_FP32, (fixture, rel)
    assert nodes == dict(count_nodes(generic_pass(block, x[:1])[0]))
    if get_spec(name).family in BLOCKS_ONLY:
        assert nodes == dict(count_nodes(block))


def test_cli_generic_verifies_and_refuses_to_write(capsys, tmp_path):
    path = shared_path("fixtures", "checkpoints", "timm_repvgg_a0.pt")
    code = main(["deploy", "repvgg_a0", "-c", str(path), "--generic", "--no-latency", "--no-images", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"]
    assert result["report"]["worst_rel"] <= REL_TOL_FP32
    out = tmp_path / "x.pt"
    assert main(["deploy", "repvgg_a0", "-c", str(path), "--generic", "-o", str(out)]) == 2
    assert "--generic only verifies" in capsys.readouterr().err and not out.exists()
