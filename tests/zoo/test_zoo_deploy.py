"""Every zoo model deploys to its plain architecture and computes the same function (bench/zoo_deploy.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from conftest import ILL_CONDITIONED_FP32, REL_TOL_FP32, REL_TOL_FP64  # noqa: E402
from zoo_deploy import deploy_model  # noqa: E402

from edgerep.proof.metrics import count_nodes  # noqa: E402
from edgerep.zoo import create_model, list_models  # noqa: E402

# ILL_CONDITIONED_FP32 (conftest): fusion proven in fp64 only; _check fails if the model becomes well conditioned.
ONE_CONV_PER_BLOCK = {"repvgg", "qarepvgg", "mobileone"}
QUICK = ["repvgg_a0", "repvgg_b1g4", "qarepvgg_a0", "mobileone_s0", "mobileone_s4", "repghostnet_050",
         "mobilenetv2_100", "resnet18_acb", "resnet18_dbb", "resnet18_cmb", "resnet18_refconv"]


def _check(name: str) -> None:
    r = deploy_model(name, size=64)
    assert r["rel_fp64"] <= REL_TOL_FP64, (name, r["rel_fp64"])
    if name in ILL_CONDITIONED_FP32:
        assert r["train_fp32_vs_fp64"] > REL_TOL_FP32, f"{name} is well conditioned now: drop it from the list"
    else:
        assert r["rel"] <= REL_TOL_FP32, (name, r["rel"], r["train_fp32_vs_fp64"])
    graph = r["deploy_graph"]
    if r["family"] in ONE_CONV_PER_BLOCK:
        assert graph.get("BatchNorm2d", 0) == 0 and graph.get("add", 0) == 0, graph
        # stem and every stage block: one conv each; an SE layer (MobileOne-S4) adds its two 1x1 convs
        assert graph["Conv2d"] == r["blocks"] + 2 * graph.get("Sigmoid", 0), graph
    elif name.startswith("resnet18_"):
        assert graph == dict(count_nodes(create_model("resnet18"))), "deploy must equal plain resnet18's graph"
    elif r["family"] == "repghostnet":
        train = count_nodes(create_model(name))
        # fusion folds each module's cheap-op BN and removes its fusion_bn; timm's deploy keeps the other BNs
        assert graph["BatchNorm2d"] == train["BatchNorm2d"] - 2 * r["blocks"]
        assert graph["add"] == train["add"] - r["blocks"]
        assert graph["Conv2d"] == train["Conv2d"]


@pytest.mark.parametrize("name", QUICK)
def test_zoo_model_deploys_exactly(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n not in QUICK])
def test_every_other_zoo_model_deploys_exactly(name):
    _check(name)
