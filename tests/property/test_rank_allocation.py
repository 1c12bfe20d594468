"""Invariants of PAVE's spectral rank allocation (Algorithm 1, eq. 9).

References: a literal transcription of Algorithm 1 and a brute-force
enumeration of eq. 9 (both in the test code), and hand-worked examples.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from pactframe_plugins.preprocessors._rank_allocation import (
    allocate_layer,
    rank_floor,
    spectral_rank_allocation,
    stopping_ratio,
)

from pactframe.errors import InputError
from tests.property._pave_reference import algorithm1

RHOS = [
    Fraction(1, 2),
    Fraction(2, 3),
    Fraction(3, 4),
    Fraction(7, 8),
    Fraction(15, 16),
    Fraction(9, 10),
]


@st.composite
def layer_spectra(draw, max_models: int = 4, max_rank: int = 8):
    """K positive singular-value vectors of common length R (random scales per model)."""
    K = draw(st.integers(1, max_models))
    R = draw(st.integers(1, max_rank))
    spectra = []
    for _ in range(K):
        scale = draw(st.floats(1e-3, 1e3))
        values = draw(st.lists(st.floats(1e-4, 1.0), min_size=R, max_size=R, unique=True))
        spectra.append(scale * np.sort(np.array(values))[::-1])
    note(f"K={K} R={R} spectra={[v.tolist() for v in spectra]}")
    return spectra


def _objective(spectra, ranks) -> float:
    """Eq. 9: sum_i sum_{j > r_i} (sigma_ij / sigma_i,max)^2."""
    return sum(float(np.sum((v[r:] / v[0]) ** 2)) for v, r in zip(spectra, ranks))


def _budget(rho: Fraction, K: int, R: int) -> int:
    return math.floor(rho * K * R)


@given(layer_spectra(), st.sampled_from(RHOS))
def test_matches_a_literal_transcription_of_algorithm_1(spectra, rho):
    """allocate_layer == Algorithm 1 as printed in the paper (strict '>' stopping rule)."""
    assert list(allocate_layer(spectra, float(rho))) == algorithm1(spectra, rho)


@given(layer_spectra(), st.sampled_from(RHOS))
def test_total_kept_rank_respects_budget_unless_every_model_is_at_its_floor(spectra, rho):
    """sum r_i == floor(rho K R) exactly (the paper's '>' rule), or all models at the floor."""
    K, R = len(spectra), len(spectra[0])
    ranks = allocate_layer(spectra, float(rho))
    floor = min(R, rank_floor(R, float(rho)))
    if sum(ranks) != _budget(rho, K, R):
        assert sum(ranks) > _budget(rho, K, R) and all(r == floor for r in ranks)


@given(layer_spectra(), st.sampled_from(RHOS))
def test_no_model_goes_below_its_floor_gamma_R(spectra, rho):
    """r_i >= max(1, floor(gamma R)) with gamma = rho - (1 - rho)/2, and r_i <= R."""
    R = len(spectra[0])
    gamma = rho - (1 - rho) / 2
    floor = max(1, math.floor(gamma * R))
    for r in allocate_layer(spectra, float(rho)):
        assert min(floor, R) <= r <= R


@settings(max_examples=30)
@given(layer_spectra(max_models=3, max_rank=5), st.sampled_from(RHOS))
def test_greedy_equals_the_brute_force_optimum_of_equation_9(spectra, rho):
    """Enumerate every (r_1..r_K) with floor <= r_i <= R and sum <= rho K R: the greedy
    allocation reaches the minimum of eq. 9."""
    K, R = len(spectra), len(spectra[0])
    floor = min(R, max(1, math.floor((rho - (1 - rho) / 2) * R)))
    budget = _budget(rho, K, R)
    feasible = [c for c in itertools.product(range(floor, R + 1), repeat=K) if sum(c) <= budget]
    ranks = allocate_layer(spectra, float(rho))
    if not feasible:  # floors bind: every model stops at its floor
        assert all(r == floor for r in ranks)
        return
    best = min(_objective(spectra, c) for c in feasible)
    assert _objective(spectra, ranks) == pytest.approx(best, rel=1e-12, abs=1e-15)


@given(layer_spectra(), st.sampled_from(RHOS))
def test_only_the_globally_smallest_removable_normalized_values_are_dropped(spectra, rho):
    """Every dropped s_ij is <= every kept s_ij that could have been dropped (above the floor),
    up to the 1e-12 within which the allocation treats normalized values as ties."""
    R = len(spectra[0])
    ranks = allocate_layer(spectra, float(rho))
    floor = rank_floor(R, float(rho))
    s = [v / v[0] for v in spectra]
    dropped = [x for v, r in zip(s, ranks) for x in v[r:]]
    removable_kept = [x for v, r in zip(s, ranks) for x in v[floor:r]]
    if dropped and removable_kept:
        # ties are decided on values rounded to 1e-12 (see allocate_layer)
        assert max(dropped) <= min(removable_kept) + 1e-12


@given(layer_spectra(), st.sampled_from(RHOS), st.sampled_from(RHOS))
def test_total_kept_rank_is_monotone_in_rho(spectra, rho_a, rho_b):
    """rho_1 < rho_2 implies sum_i r_i(rho_1) <= sum_i r_i(rho_2), and each model's rank at
    rho_2 is at least the floor at rho_1.

    Some notes state the stronger per-model r_i(rho_1) <= r_i(rho_2); Algorithm 1 does
    not have it (the floor rises with rho and can move a drop to another model; see
    test_per_model_ranks_are_not_monotone_in_rho_when_the_floor_rises)."""
    lo, hi = sorted((rho_a, rho_b))
    r_lo, r_hi = allocate_layer(spectra, float(lo)), allocate_layer(spectra, float(hi))
    assert sum(r_lo) <= sum(r_hi)
    R = len(spectra[0])
    assert all(r >= rank_floor(R, float(lo)) for r in r_hi)


def test_per_model_ranks_are_not_monotone_in_rho_when_the_floor_rises():
    """Counterexample to per-model monotonicity, worked by hand (K = 2, R = 6).

    rho = 7/8: budget floor(10.5) = 10, gamma R = 4.875. The two smallest normalized values
    overall are model A's 0.125 and then A's 0.25 (tied with B's 0.25; ties go to the lower
    index), so A drops two: (4, 6).
    rho = 9/10: budget floor(10.8) = 10, gamma R = 5.1. A drops 0.125 and stops at 5 <= 5.1,
    so the second drop falls to B: (5, 5). B's rank went from 6 down to 5 as rho grew."""
    a = np.array([1.0, 0.75, 0.5, 0.375, 0.25, 0.125])
    b = np.array([1.0, 0.875, 0.75, 0.625, 0.5, 0.25])
    assert allocate_layer([a, b], 7 / 8) == (4, 6)
    assert allocate_layer([a, b], 9 / 10) == (5, 5)


@given(layer_spectra(), st.sampled_from(RHOS), st.floats(1e-6, 1e6), st.data())
def test_invariant_to_rescaling_one_models_w_c(spectra, rho, factor, data):
    """Scaling model i's W_i C_i (so its singular values) leaves the allocation unchanged.

    Exact ties between models (equal normalized values) included: the allocation compares
    normalized values to 1e-12, so the rounding of sigma / sigma_max cannot flip a tie."""
    i = data.draw(st.integers(0, len(spectra) - 1))
    scaled = [v * factor if j == i else v for j, v in enumerate(spectra)]
    assert allocate_layer(scaled, float(rho)) == allocate_layer(spectra, float(rho))


def test_hand_worked_example_two_models():
    """K=2, R=4, rho=3/4: gamma=5/8, gamma R=2.5 (floor 2), budget floor(0.75*8)=6.

    s_A = [1, .5, .25, .1], s_B = [1, .9, .8, .7]. Step 1 drops A's .1 (vs B's .7),
    step 2 drops A's .25; total 6 <= 6 stops: r = (2, 4). With rho = 5/8 (floor 1,
    budget 5) a third step drops A's .5: r = (1, 4).
    """
    a, b = np.array([4.0, 2.0, 1.0, 0.4]), np.array([10.0, 9.0, 8.0, 7.0])
    assert allocate_layer([a, b], 0.75) == (2, 4)
    assert allocate_layer([a, b], 0.625) == (1, 4)
    assert stopping_ratio(0.75) == 0.625 and rank_floor(4, 0.75) == 2


def test_hand_worked_example_floor_binds():
    """K=2, R=4, rho=7/8: floor(gamma R = 3.25) = 3, budget 7. A's tail is tiny but A may
    lose only one component; the second removal falls on B: r = (3, 4) (total 7)."""
    a, b = np.array([1.0, 1e-3, 1e-4, 1e-5]), np.array([1.0, 0.9, 0.8, 0.7])
    assert allocate_layer([a, b], 7 / 8) == (3, 4)
    # rho = 3/4: floor 2, budget 6: A loses two, B none
    assert allocate_layer([a, b], 3 / 4) == (2, 4)


def test_strict_rule_reaches_the_budget_where_the_released_code_stops_one_short():
    """K=8, R=64, rho=7/8: the paper's '>' keeps exactly 448 = rho K R (code: 447)."""
    rng = np.random.default_rng(0)
    spectra = [np.sort(rng.uniform(0.01, 1.0, 64))[::-1] for _ in range(8)]
    assert sum(allocate_layer(spectra, 7 / 8)) == 448


def test_model_ratios_over_layers_hand_example():
    """rho_i = sum_l r_i^l / sum_l R^l: layer 1 (R=4) gives (2, 4), layer 2 (R=2, rho=3/4:
    floor max(1, floor(1.25)) = 1, budget 3) drops A's smaller value: (1, 2)."""
    spectra = {
        "l1": {"A": [4.0, 2.0, 1.0, 0.4], "B": [10.0, 9.0, 8.0, 7.0]},
        "l2": {"A": [1.0, 0.1], "B": [1.0, 0.5]},
    }
    alloc = spectral_rank_allocation(spectra, 0.75)
    assert alloc.ranks == {"l1": {"A": 2, "B": 4}, "l2": {"A": 1, "B": 2}}
    assert alloc.full_ranks == {"l1": 4, "l2": 2}
    assert alloc.ratios == {"A": 3 / 6, "B": 6 / 6}
    data = alloc.to_data()
    assert data["gamma"] == 0.625 and data["layers"]["l2"] == {"R": 2, "ranks": {"A": 1, "B": 2}}


def test_a_task_missing_from_a_layer_is_normalised_by_its_own_layers():
    spectra = {"l1": {"A": [1.0, 0.1], "B": [1.0, 0.5]}, "l2": {"B": [3.0, 2.0, 1.0]}}
    alloc = spectral_rank_allocation(spectra, 0.75)
    assert alloc.ratios["A"] == alloc.ranks["l1"]["A"] / 2
    assert alloc.ratios["B"] == (alloc.ranks["l1"]["B"] + alloc.ranks["l2"]["B"]) / 5


@pytest.mark.parametrize("rho", [0, -0.5, 1.5, True, "0.9"])
def test_bad_rho_is_rejected(rho):
    with pytest.raises(InputError, match="rho"):
        allocate_layer([np.ones(3)], rho)


def test_spectra_of_different_lengths_are_rejected():
    with pytest.raises(InputError, match="share the full rank"):
        allocate_layer([np.ones(3), np.ones(4)], 0.9)


@settings(max_examples=25)
@given(
    st.lists(layer_spectra(max_models=1, max_rank=8), min_size=1, max_size=4),
    st.integers(2, 4),
    st.sampled_from(RHOS),
    st.data(),
)
def test_mean_model_ratio_is_the_kept_fraction_and_close_to_rho(layers, K, rho, data):
    """With every model in every layer: mean_i rho_i = sum_l sum_i r_i^l / (K sum_l R^l),
    which is <= rho and within L/(K sum_l R^l) of it unless floors bind."""
    spectra = {}
    for l, (first,) in enumerate(layers):
        R = len(first)
        others = [
            np.sort(data.draw(st.lists(st.floats(1e-4, 1.0), min_size=R, max_size=R, unique=True)))[
                ::-1
            ]
            for _ in range(K - 1)
        ]
        spectra[f"l{l}"] = {f"t{i}": v for i, v in enumerate([first, *others])}
    alloc = spectral_rank_allocation(spectra, float(rho))
    total_R = sum(alloc.full_ranks.values())
    kept = sum(sum(r.values()) for r in alloc.ranks.values())
    mean_ratio = float(np.mean(list(alloc.ratios.values())))
    assert mean_ratio == pytest.approx(kept / (K * total_R), rel=1e-12)
    floors_bind = any(
        all(r == min(R, rank_floor(R, float(rho))) for r in alloc.ranks[l].values())
        and sum(alloc.ranks[l].values()) > rho * K * R
        for l, R in alloc.full_ranks.items()
    )
    if not floors_bind:
        assert float(rho) - len(layers) / (K * total_R) - 1e-12 <= mean_ratio <= float(rho) + 1e-12
