"""edgerep.proof.numerics: the comparison measures every report uses."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerep.proof.numerics import closeness, top1_accuracy, top1_change


def _onehot(classes: list[int], n: int = 4) -> torch.Tensor:
    return torch.eye(n)[classes]


def test_top1_change_is_paired_per_image_with_its_standard_error() -> None:
    labels = torch.tensor([0, 1, 2, 3, 1, 1])
    ref = _onehot([0, 1, 2, 3, 0, 1])  # 5 of 6 right
    out = _onehot([0, 1, 2, 0, 1, 1])  # 5 of 6 right, but not the same ones
    change, se = top1_change(ref, out, labels)
    assert change == 0.0
    assert math.isclose(se, math.sqrt(2 / 5) / math.sqrt(6))  # d = (0, 0, 0, -1, +1, 0): sample std / sqrt(n)
    assert top1_change(ref, ref, labels) == (0.0, 0.0)  # the same predictions: no change, no doubt


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), min_size=2, max_size=60))
def test_top1_change_equals_the_difference_of_accuracies(rows: list[tuple[int, int, int]]) -> None:
    labels = np.array([r[0] for r in rows])
    ref, out = _onehot([r[1] for r in rows]), _onehot([r[2] for r in rows])
    change, se = top1_change(ref.numpy(), out, labels)
    assert math.isclose(change, top1_accuracy(out, labels) - top1_accuracy(ref, labels), abs_tol=1e-12)
    assert se >= 0.0


def test_closeness_of_identical_outputs_is_perfect() -> None:
    x = torch.randn(8, 10)
    near = closeness(x, x)
    assert near.top1 == 1.0 and math.isclose(near.cosine, 1.0) and near.kl == 0.0
