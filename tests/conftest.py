"""Shared test helpers and the location of the team's shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from edgerep.numerics import output_error, randomize_bn
from edgerep.reparam import reparameterize

# One thread: on this 2-core machine, shared with other work, two threads make tiny convs ~1000x slower.
torch.set_num_threads(1)

settings.register_profile(
    "edgerep", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "edgerep"))

# Fusion tolerances, stated once. fp64 proves the math (only rounding remains); fp32 is what users run.
REL_TOL_FP64 = 1e-10
REL_TOL_FP32 = 1e-5

SHARED = Path(os.environ.get("EDGEREP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "checkpoints"


def shared_path(*parts: str) -> Path:
    """A file under ../shared/: skipped with a reason when absent, a failure under CI=true."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared fixture {p} not found (set EDGEREP_SHARED to the shared/ folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def assert_fuses_exactly(block: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> float:
    """Randomize BN stats, fuse in fp64 and fp32, assert both within tolerance; return the fp32 rel error."""
    gen = torch.Generator().manual_seed(seed)
    randomize_bn(block, gen)
    block.eval()
    worst32 = 0.0
    for dtype, tol in ((torch.float64, REL_TOL_FP64), (torch.float32, REL_TOL_FP32)):
        b = block.to(dtype)
        with torch.no_grad():
            ref = b(x.to(dtype))
            fused = reparameterize(b)
            out = fused(x.to(dtype))
        err = output_error(ref, out)
        assert err.rel <= tol, f"{dtype}: rel error {err.rel:.3g} > {tol} (max abs {err.max_abs:.3g})"
        if dtype == torch.float32:
            worst32 = err.rel
    block.float()
    return worst32
