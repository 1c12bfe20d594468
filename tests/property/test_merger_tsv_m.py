"""Invariants (docs/invariants.md) of TSV-M (Gargiulo et al., CVPR 2025)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers.tsv_m import TSVM, task_ranks

from tests.property._references_mergers import ref_tsv_m
from tests.property._strategies_mergers import (
    arrays_of,
    assert_close,
    distinct_task_bundles,
    orthogonal_task_bundles,
    permuted,
    scaled,
    vector_bundles,
)

splits = st.sampled_from(["floor", "balanced"])


@given(distinct_task_bundles(num_tasks=st.just(1)), splits)
def test_tsv_m_with_one_task_returns_it(bundle, split):
    """T = 1: every singular triplet is kept and the factors are already orthonormal."""
    out = TSVM(rank_split=split).merge(bundle).delta
    assert_close(out, bundle.task_vectors[0].numpy(), rtol=1e-10)


@given(orthogonal_task_bundles(), splits, st.floats(0.1, 3.0))
def test_tsv_m_of_orthogonal_rank_r_over_t_tasks_is_their_sum(case, split, alpha):
    """Mutually orthogonal row and column spaces, each of rank r/T: TSV-M = alpha sum_t Delta_t."""
    bundle, _ = case
    expected = alpha * np.sum(arrays_of(bundle), axis=0)
    assert_close(TSVM(scaling=alpha, rank_split=split).merge(bundle).delta, expected, rtol=1e-10)


@given(distinct_task_bundles())
def test_tsv_m_rank_is_at_most_t_floor_r_over_t(bundle):
    """rank(output) <= T * floor(r / T) with the original ('floor') budget."""
    r, T = min(bundle.base.shape), bundle.num_tasks
    out = TSVM().merge(bundle).delta.numpy()
    sv = np.linalg.svd(out, compute_uv=False)
    numerical_rank = int((sv > 1e-9 * max(sv.max(initial=0.0), 1.0)).sum())
    assert numerical_rank <= T * (r // T)


@given(distinct_task_bundles(), splits)
def test_tsv_m_singular_values_are_the_kept_task_singular_values(bundle, split):
    """The output's spectrum is exactly the multiset of each task's top-k_t singular values."""
    r, T = min(bundle.base.shape), bundle.num_tasks
    ranks = [r // T] * T if split == "floor" else [r // T + (t < r % T) for t in range(T)]
    kept = np.concatenate(
        [np.linalg.svd(a, compute_uv=False)[:k] for a, k in zip(arrays_of(bundle), ranks)]
    )
    expected = np.sort(np.concatenate([kept, np.zeros(r - kept.size)]))[::-1]
    sv = np.linalg.svd(TSVM(rank_split=split).merge(bundle).delta.numpy(), compute_uv=False)
    assert np.allclose(sv, expected, rtol=1e-9, atol=1e-9 * expected.max())


@given(vector_bundles(), st.floats(-2.0, 2.0))
def test_tsv_m_gives_alpha_times_the_mean_on_vectors(bundle, alpha):
    """1-D keys: alpha * mean_t Delta_t, as the authors' code."""
    expected = alpha * np.mean(arrays_of(bundle), axis=0)
    assert_close(TSVM(scaling=alpha).merge(bundle).delta, expected, rtol=1e-13)


@given(distinct_task_bundles(), st.floats(0.01, 100.0))
def test_tsv_m_is_positively_homogeneous_in_the_joint_scale(bundle, c):
    """TSV(c Delta) = c TSV(Delta) for c > 0."""
    expected = c * TSVM().merge(bundle).delta.numpy()
    assert_close(TSVM().merge(scaled(bundle, c)).delta, expected, rtol=1e-9)


@given(distinct_task_bundles(num_tasks=st.integers(2, 4)), st.data())
def test_tsv_m_floor_split_is_permutation_invariant(bundle, data):
    """Reordering tasks permutes the kept columns of U and rows of V together (floor split)."""
    order = data.draw(st.permutations(list(range(bundle.num_tasks))))
    assert_close(TSVM().merge(permuted(bundle, order)).delta, TSVM().merge(bundle).delta.numpy())


@settings(max_examples=30)
@given(distinct_task_bundles(), splits, st.floats(0.1, 3.0))
def test_tsv_m_matches_a_dense_reference_with_zero_padded_buffers(bundle, split, alpha):
    """Against the authors' algorithm in numpy (m x r buffers, empty remainder columns)."""
    expected = ref_tsv_m(arrays_of(bundle), alpha, split)
    out = TSVM(scaling=alpha, rank_split=split).merge(bundle).delta
    assert_close(out, expected, rtol=1e-8)


@given(st.integers(1, 100), st.integers(1, 12))
def test_task_ranks_budgets(rank, T):
    """floor: int(r/T) each, remainder unused; balanced: sums to r, differ by at most one."""
    floor = task_ranks(rank, T, "floor")
    balanced = task_ranks(rank, T, "balanced")
    assert floor == [int(rank / T)] * T
    assert sum(balanced) == rank and max(balanced) - min(balanced) <= 1
    assert balanced == sorted(balanced, reverse=True)
