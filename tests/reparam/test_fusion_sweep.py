"""Random block configurations across every block type (bench/fusion_sweep.py): fp32 <= 1e-5, fp64 <= 1e-10."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from conftest import REL_TOL_FP32, REL_TOL_FP64  # noqa: E402
from fusion_sweep import SAMPLERS, run_sweep  # noqa: E402


def _check(result: dict, configs: int) -> None:
    assert result["configs"] == configs
    assert set(result["blocks"]) == set(SAMPLERS)
    # fp32 itself may lose digits on a degenerate configuration (judged in fp64 then), but rarely
    assert result["ill_conditioned"] <= configs // 100, result["ill_conditioned"]
    for name, s in result["blocks"].items():
        assert s["configs"] >= configs // len(SAMPLERS), name
        assert s["worst_rel_fp32"] <= REL_TOL_FP32, (name, s["worst_rel_fp32"], s["worst_config"])
        assert s["worst_rel_fp64"] <= REL_TOL_FP64, (name, s["worst_rel_fp64"])


def test_sweep_every_block_quickly():
    _check(run_sweep(330, seed=1), 330)


@pytest.mark.slow
def test_sweep_ten_thousand_configurations():
    _check(run_sweep(10_000, seed=0), 10_000)
