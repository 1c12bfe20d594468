"""Invariants (docs/invariants.md) of Iso-C and Iso-CTS (Marczak et al., ICML 2025)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS, subspace_sizes

from pactframe.testing.strategies import layer_bundles, matrices
from tests.property._references_mergers import ref_iso_c, ref_iso_cts
from tests.property._strategies_mergers import (
    SIDE,
    arrays_of,
    assert_close,
    bundle_from_arrays,
    bundles_with_full_rank_sum,
    distinct_task_bundles,
    permuted,
    scaled,
    vector_bundles,
)

fractions = st.floats(0.0, 1.0)


def singular_values(x) -> np.ndarray:
    return np.linalg.svd(x.numpy(), compute_uv=False)


# ---------------------------------------------------------------- Iso-C
@given(bundles_with_full_rank_sum())
def test_iso_c_output_spectrum_is_flat_at_the_mean_singular_value_of_the_sum(bundle):
    """Every singular value of Iso-C's output equals mean sigma(sum_t Delta_t)."""
    target = np.linalg.svd(np.sum(arrays_of(bundle), axis=0), compute_uv=False).mean()
    sv = singular_values(IsoC().merge(bundle).delta)
    assert np.allclose(sv, target, rtol=1e-9, atol=0)


@given(bundles_with_full_rank_sum())
def test_iso_c_preserves_the_nuclear_norm_of_the_sum(bundle):
    """||Iso(M)||_* = ||M||_* for M = sum_t Delta_t."""
    nuclear = np.linalg.norm(np.sum(arrays_of(bundle), axis=0), ord="nuc")
    out = np.linalg.norm(IsoC().merge(bundle).delta.numpy(), ord="nuc")
    assert abs(out - nuclear) <= 1e-9 * nuclear


@given(bundles_with_full_rank_sum(), st.floats(-3.0, 3.0))
def test_iso_c_equals_mean_sigma_times_polar_factor_dense_reference(bundle, alpha):
    """Output = alpha (||M||_* / r) U V^T, against an independent numpy computation."""
    assert_close(IsoC(scaling=alpha).merge(bundle).delta, ref_iso_c(arrays_of(bundle), alpha))


@given(bundles_with_full_rank_sum(), st.floats(-4.0, 4.0).filter(lambda c: abs(c) > 1e-3))
def test_iso_c_is_homogeneous_for_every_real_factor(bundle, c):
    """Iso(c Delta) = c Iso(Delta) for all real c, negative included."""
    assert_close(
        IsoC().merge(scaled(bundle, c)).delta, c * IsoC().merge(bundle).delta.numpy(), rtol=1e-9
    )


@given(bundles_with_full_rank_sum(num_tasks=st.integers(2, 4)), st.data())
def test_iso_c_is_permutation_invariant(bundle, data):
    """Reordering the tasks does not change Iso-C."""
    order = data.draw(st.permutations(list(range(bundle.num_tasks))))
    assert_close(IsoC().merge(permuted(bundle, order)).delta, IsoC().merge(bundle).delta.numpy())


@given(vector_bundles(), st.floats(-2.0, 2.0))
def test_iso_c_and_iso_cts_give_alpha_times_the_mean_on_vectors(bundle, alpha):
    """1-D tensors: alpha * mean_t Delta_t (the authors' rule, via the fallback)."""
    expected = alpha * np.mean(arrays_of(bundle), axis=0)
    assert_close(IsoC(scaling=alpha).merge(bundle).delta, expected, rtol=1e-13)
    assert_close(IsoCTS(scaling=alpha).merge(bundle).delta, expected, rtol=1e-13)


@settings(max_examples=20)
@given(matrices(rows=SIDE, cols=SIDE), st.floats(0.1, 3.0))
def test_iso_c_single_task_is_identity_only_for_a_flat_spectrum(constructed, level):
    """T = 1: a flat-spectrum Delta comes back unchanged; a separated spectrum does not."""
    flat = level * (constructed.U @ constructed.Vh).numpy()
    assert_close(IsoC().merge(bundle_from_arrays([flat])).delta, flat, rtol=1e-10)
    steep = constructed.matrix.numpy()
    out = IsoC().merge(bundle_from_arrays([steep])).delta.numpy()
    assert np.abs(out - steep).max() > 1e-6 * np.abs(steep).max()


# ---------------------------------------------------------------- Iso-CTS
@given(st.integers(1, 64), st.integers(1, 10), fractions)
def test_iso_cts_common_plus_task_slots_fill_the_rank(rank, T, fraction):
    """c + T s = r with 0 <= c <= r, s >= 0; equal to the authors' formula where that is valid."""
    common, per_task = subspace_sizes(rank, T, fraction)
    assert common + T * per_task == rank and 0 <= common <= rank and per_task >= 0
    authors_c = rank - round((rank - int(rank * fraction)) / T) * T
    if authors_c >= 0:
        assert common == authors_c


@settings(max_examples=25)
@given(bundles_with_full_rank_sum())
def test_iso_cts_with_common_fraction_one_equals_iso_c(bundle):
    """f = 1: no task-specific slots, so Iso-CTS = Iso-C."""
    expected = IsoC().merge(bundle).delta.numpy()
    assert_close(IsoCTS(common_space_fraction=1.0).merge(bundle).delta, expected, rtol=1e-9)


@settings(max_examples=25)
@given(layer_bundles(num_tasks=st.just(1), rows=SIDE, cols=SIDE), fractions)
def test_iso_cts_with_one_task_equals_iso_c_for_any_fraction(bundle, fraction):
    """T = 1: common space + the residual's top directions span the whole SVD of Delta."""
    expected = IsoC().merge(bundle).delta.numpy()
    out = IsoCTS(common_space_fraction=fraction).merge(bundle).delta
    assert_close(out, expected, rtol=1e-9)


@settings(max_examples=25)
@given(distinct_task_bundles(), fractions, st.floats(0.2, 2.0))
def test_iso_cts_output_spectrum_is_flat_and_factors_orthonormal(bundle, fraction, alpha):
    """All r singular values are equal: delta / sigma is a partial isometry (orthonormal U, V)."""
    out = IsoCTS(scaling=alpha, common_space_fraction=fraction).merge(bundle).delta.numpy()
    sv = np.linalg.svd(out, compute_uv=False)
    assert np.allclose(sv, sv[0], rtol=1e-9, atol=0)
    q = out / sv[0]
    gram = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
    assert np.allclose(gram, np.eye(gram.shape[0]), atol=1e-9)


@settings(max_examples=25)
@given(distinct_task_bundles(), fractions, st.floats(0.2, 2.0))
def test_iso_cts_matches_a_dense_reference(bundle, fraction, alpha):
    """Against the authors' algorithm re-written in numpy (fixed buffers, common space last)."""
    rank, T = min(bundle.base.shape), bundle.num_tasks
    if rank - round((rank - int(rank * fraction)) / T) * T < 0:
        fraction = 1.0  # the original formula is undefined there (see subspace_sizes)
    expected = ref_iso_cts(arrays_of(bundle), fraction, alpha)
    out = IsoCTS(scaling=alpha, common_space_fraction=fraction).merge(bundle).delta
    assert_close(out, expected, rtol=1e-8)


@settings(max_examples=25)
@given(distinct_task_bundles(num_tasks=st.integers(2, 4)), fractions, st.data())
def test_iso_cts_is_permutation_invariant(bundle, fraction, data):
    """Reordering tasks permutes slots of U and V together, which the polar factor respects."""
    order = data.draw(st.permutations(list(range(bundle.num_tasks))))
    merger = IsoCTS(common_space_fraction=fraction)
    assert_close(merger.merge(permuted(bundle, order)).delta, merger.merge(bundle).delta.numpy())


@settings(max_examples=15)
@given(distinct_task_bundles(), fractions)
def test_iso_cts_on_a_transposed_layout_is_the_transpose(bundle, fraction):
    """input_axis = 0 (Conv1D): merge(W^T layout) = merge(W)^T, common space on the output side."""
    arrays = arrays_of(bundle)
    transposed = bundle_from_arrays([a.T for a in arrays], input_axis=0)
    merger = IsoCTS(common_space_fraction=fraction)
    expected = merger.merge(bundle).delta.numpy().T
    assert_close(merger.merge(transposed).delta, expected)
