"""TIES-Merging: hand-worked examples, global trim, contract, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pactframe_plugins.mergers.ties import TIES, GlobalTrimState, keep_count

from pactframe.errors import InputError, InvalidParameterError
from pactframe.testing import check_component
from tests.property._strategies_mergers import assert_close, bundle_from_arrays


@pytest.mark.parametrize(
    "merger",
    [TIES(), TIES(disjoint="sum", scaling=0.3), TIES(trim_scope="global", keep_fraction=1.0)],
)
def test_contract(merger):
    check_component(merger)


HAND = [
    [4.0, -1.0, 0.5, 2.0, -3.0],
    [-2.0, 3.0, 0.2, 1.0, -1.0],
    [1.0, 2.0, -0.4, -5.0, 3.0],
]


def test_hand_example_trim_elect_disjoint_mean_and_sum():
    """k = 0.6 of 5 -> keep 3 per task (task 2 keeps 4: |1| ties at the threshold).
    trimmed: [4, 0, 0, 2, -3], [-2, 3, 0, 1, -1], [0, 2, 0, -5, 3]
    mass:    [2, 5, 0, -2, -1] -> elected [+, +, (majority), -, -]
    agreeing entries: {4}, {3, 2}, {}, {-5}, {-3, -1}
    dis-mean: [4, 2.5, 0, -5, -2];  dis-sum: [4, 5, 0, -5, -4]."""
    bundle = bundle_from_arrays(HAND)
    mean = TIES(keep_fraction=0.6).merge(bundle)
    assert_close(mean.delta, np.array([4.0, 2.5, 0.0, -5.0, -2.0]), rtol=0)
    assert mean.records[-1].data == {"trim_scope": "tensor", "kept_fraction": [0.6, 0.8, 0.6]}
    total = TIES(keep_fraction=0.6, disjoint="sum", scaling=0.5).merge(bundle).delta
    assert_close(total, 0.5 * np.array([4.0, 5.0, 0.0, -5.0, -4.0]), rtol=0)


def test_hand_example_zero_sum_entries_take_the_majority_sign():
    """[1, 2, 3, -1] and [-1, 1, 1, 1]: sums [0, 3, 4, 0]; the elected signs of the
    nonzero sums are (+, +), so the two cancelling entries elect + and keep the
    positive value: dis-mean [1, 1.5, 2, 1]."""
    bundle = bundle_from_arrays([[1.0, 2.0, 3.0, -1.0], [-1.0, 1.0, 1.0, 1.0]])
    assert_close(TIES(keep_fraction=1.0).merge(bundle).delta, np.array([1.0, 1.5, 2.0, 1.0]), 0)


def test_hand_example_global_versus_per_tensor_trim():
    """One task, two tensors, k = 0.5 of 8 entries = 4: globally all of the large tensor
    survives and none of the small one; per tensor, 2 of each survive."""
    big = bundle_from_arrays([[10.0, -8.0, 6.0, 4.0]], name="big")
    small = bundle_from_arrays([[1.0, -2.0, 3.0, 0.5]], name="small")
    merger = TIES(keep_fraction=0.5, trim_scope="global")
    assert merger.needs_prepass and not TIES().needs_prepass
    state = merger.prepare(iter([big, small]))
    assert isinstance(state, GlobalTrimState)
    assert state.targets == (4,) and state.kept == (4,) and state.totals == (8,)
    assert_close(merger.merge(big, state).delta, np.array([10.0, -8.0, 6.0, 4.0]), rtol=0)
    assert_close(merger.merge(small, state).delta, np.zeros(4), rtol=0)
    per_tensor = TIES(keep_fraction=0.5)
    assert_close(per_tensor.merge(big).delta, np.array([10.0, -8.0, 0.0, 0.0]), rtol=0)
    assert_close(per_tensor.merge(small).delta, np.array([0.0, -2.0, 3.0, 0.0]), rtol=0)
    # without a state a single tensor is its own model: exact per-tensor trim
    assert_close(merger.merge(small).delta, np.array([0.0, -2.0, 3.0, 0.0]), rtol=0)


def test_global_state_for_other_tasks_is_an_input_error():
    merger = TIES(trim_scope="global")
    state = merger.prepare([bundle_from_arrays([[1.0, 2.0]], task_names=["a"])])
    with pytest.raises(InputError, match="prepared state is for tasks"):
        merger.merge(bundle_from_arrays([[1.0, 2.0]], task_names=["b"]), state)
    with pytest.raises(InputError, match="same tasks in the same order"):
        merger.prepare(
            [
                bundle_from_arrays([[1.0], [2.0]], task_names=["a", "b"]),
                bundle_from_arrays([[1.0], [2.0]], task_names=["b", "a"]),
            ]
        )


def test_keep_count_is_exact_on_decimal_fractions():
    """0.07 * 100 is 7.000000000000001 and 0.14 * 100 is 14.000000000000002 in binary
    floating point (their ceilings are 8 and 15); we keep 7 and 14. (0.7 * 10 is exactly
    7.0, so it shows nothing.)"""
    assert math.ceil(0.07 * 100) == 8 and math.ceil(0.14 * 100) == 15  # the pitfall
    assert keep_count(0.07, 100) == 7
    assert keep_count(0.14, 100) == 14
    assert keep_count(0.7, 10) == 7
    assert keep_count(0.2, 11) == 3
    assert keep_count(1.0, 5) == 5
    assert keep_count(1e-9, 5) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"keep_fraction": 0.0}, r"'keep_fraction' parameter of TIES must be a float in \(0, 1\]"),
        ({"keep_fraction": 20}, "'keep_fraction'"),
        ({"disjoint": "max"}, "'disjoint' parameter of TIES must be one of"),
        ({"trim_scope": "layer"}, "'trim_scope'"),
    ],
)
def test_bad_parameters_are_rejected_by_name(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        TIES(**kwargs)
