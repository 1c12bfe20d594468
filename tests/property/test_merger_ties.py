"""Invariants (docs/invariants.md) of TIES-Merging (Yadav et al., NeurIPS 2023)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers.ties import TIES, top_magnitude_mask

from tests.property._references_mergers import (
    ref_global_thresholds,
    ref_keep_count,
    ref_ties,
)
from tests.property._strategies_mergers import (
    assert_close,
    bundle_from_arrays,
    permuted,
)

fractions = st.sampled_from([0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])
disjoints = st.sampled_from(["mean", "sum"])
shapes = st.sampled_from([(3, 4), (7,), (2, 2), (5, 3), (1,), ()])


@st.composite
def task_arrays(draw, *, num_tasks=None, shape=shapes):
    """T random float64 arrays of one shape (continuous values: no ties by construction)."""
    s = draw(shape)
    T = draw(num_tasks if num_tasks is not None else st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [np.asarray(rng.standard_normal(s) * draw(st.floats(0.1, 10.0))) for _ in range(T)]


@st.composite
def sign_agreeing_arrays(draw):
    """T arrays sharing one sign pattern and with nonzero entries."""
    s = draw(shapes)
    T = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    signs = rng.choice([-1.0, 1.0], size=s)
    return [np.asarray(signs * rng.uniform(0.1, 3.0, size=s)) for _ in range(T)]


@given(sign_agreeing_arrays(), st.floats(0.1, 3.0))
def test_ties_keep_all_with_agreeing_signs_is_the_mean_or_the_sum(arrays, lam):
    """k = 100% and all tasks agree in sign: dis-mean = lambda mean_t, dis-sum = lambda sum_t."""
    bundle = bundle_from_arrays(arrays)
    mean = TIES(scaling=lam, keep_fraction=1.0, disjoint="mean").merge(bundle).delta
    total = TIES(scaling=lam, keep_fraction=1.0, disjoint="sum").merge(bundle).delta
    assert_close(mean, lam * np.mean(arrays, axis=0), rtol=1e-13)
    assert_close(total, lam * np.sum(arrays, axis=0), rtol=1e-13)


@given(task_arrays(num_tasks=st.just(1)), fractions, disjoints)
def test_ties_single_task_returns_its_top_k_entries(arrays, k, disjoint):
    """T = 1: k = 100% returns tau; k < 100% returns tau with all but the top ceil(kD) zeroed."""
    tau = arrays[0]
    out = TIES(keep_fraction=k, disjoint=disjoint).merge(bundle_from_arrays(arrays)).delta.numpy()
    n_keep = ref_keep_count(k, tau.size)
    order = np.argsort(-np.abs(tau.ravel()), kind="stable")
    expected = np.zeros(tau.size)
    expected[order[:n_keep]] = tau.ravel()[order[:n_keep]]
    assert_close(out, expected.reshape(tau.shape), rtol=0)


@given(task_arrays(), fractions, disjoints)
def test_ties_every_nonzero_entry_carries_the_elected_sign(arrays, k, disjoint):
    """sign(merged) = gamma wherever merged != 0, gamma elected from the numpy-trimmed tasks."""
    out = TIES(keep_fraction=k, disjoint=disjoint).merge(bundle_from_arrays(arrays)).delta.numpy()
    D = arrays[0].size
    trimmed = []
    for a in arrays:
        kth = np.sort(np.abs(a.ravel()))[::-1][ref_keep_count(k, D) - 1]
        trimmed.append(np.where(np.abs(a) >= kth, a, 0.0))
    gamma = np.sign(np.sum(trimmed, axis=0))
    nonzero = out != 0
    assert np.all(np.sign(out[nonzero]) == gamma[nonzero])


@given(task_arrays(), fractions)
def test_ties_dis_mean_lies_between_the_agreeing_entries(arrays, k):
    """dis-mean: min over contributing tasks <= merged <= max over contributing tasks."""
    out = TIES(keep_fraction=k).merge(bundle_from_arrays(arrays)).delta.numpy().ravel()
    M = np.stack([a.ravel() for a in arrays])
    for i, value in enumerate(out):
        if value == 0:
            continue
        agreeing = M[:, i][np.sign(M[:, i]) == np.sign(value)]
        assert agreeing.min() - 1e-12 <= value <= agreeing.max() + 1e-12


@given(task_arrays(num_tasks=st.just(1)), fractions)
def test_ties_trim_keeps_at_least_ceil_k_d_entries_per_task(arrays, k):
    """At least ceil(k D) entries survive the trim (exactly that many without ties)."""
    tau = arrays[0]
    kept = int(top_magnitude_mask(torch.from_numpy(tau), k).sum())
    assert kept >= ref_keep_count(k, tau.size)
    tied = np.repeat(np.abs(tau.ravel()[:1]), tau.size)  # every entry tied: all are kept
    assert int(top_magnitude_mask(torch.from_numpy(tied), k).sum()) == tau.size


@given(task_arrays(num_tasks=st.just(2), shape=st.sampled_from([(4,), (3, 3), (6,)])), st.data())
def test_ties_zero_sum_entries_take_the_majority_sign(arrays, data):
    """Entries whose trimmed task values cancel exactly take the tensor's majority sign,
    so they merge to the contributing task value of that sign."""
    a, b = arrays
    cancel = data.draw(st.lists(st.booleans(), min_size=a.size, max_size=a.size))
    mask = np.array(cancel).reshape(a.shape)
    b = np.where(mask, -a, b)
    out = TIES(keep_fraction=1.0).merge(bundle_from_arrays([a, b])).delta.numpy()
    sums = a + b
    elected = np.sign(sums)
    majority = np.sign(elected.sum())
    for idx in zip(*np.nonzero(mask & (a != 0))):
        expected = a[idx] if np.sign(a[idx]) == majority else (b[idx] if majority != 0 else 0.0)
        assert out[idx] == expected


@given(task_arrays(num_tasks=st.integers(2, 4)), fractions, disjoints, st.data())
def test_ties_is_permutation_invariant(arrays, k, disjoint, data):
    """Reordering the tasks does not change the merge."""
    bundle = bundle_from_arrays(arrays)
    order = data.draw(st.permutations(list(range(len(arrays)))))
    merger = TIES(keep_fraction=k, disjoint=disjoint)
    assert_close(merger.merge(permuted(bundle, order)).delta, merger.merge(bundle).delta.numpy())


@given(task_arrays(), fractions, disjoints, st.floats(0.1, 2.0))
def test_ties_per_tensor_matches_a_dense_reference(arrays, k, disjoint, lam):
    """trim_scope='tensor' against the algorithm re-written in numpy."""
    out = TIES(scaling=lam, keep_fraction=k, disjoint=disjoint).merge(bundle_from_arrays(arrays))
    assert_close(out.delta, ref_ties(arrays, k, disjoint, lam), rtol=1e-13)


@st.composite
def model_with_separated_magnitudes(draw):
    """Several tensors (matrices, biases, a scalar) whose magnitudes per task are
    distinct powers of 1.01 (relative gaps 1e-2 >> the 2^-12 histogram bin), with
    random signs: then the global kth magnitude is unambiguous and the histogram
    threshold is exact."""
    T = draw(st.integers(1, 3))
    shapes_ = draw(st.lists(shapes, min_size=1, max_size=4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = [int(np.prod(s)) for s in shapes_]
    tensors: list[list[np.ndarray]] = [[] for _ in shapes_]
    for _ in range(T):
        exponents = rng.permutation(sum(sizes)) - sum(sizes) // 2
        mags = 1.01 ** exponents.astype(np.float64) * draw(st.floats(0.5, 2.0))
        signs = rng.choice([-1.0, 1.0], size=mags.size)
        start = 0
        for i, (s, size) in enumerate(zip(shapes_, sizes)):
            tensors[i].append((signs * mags)[start : start + size].reshape(s))
            start += size
    return tensors


@settings(max_examples=20)
@given(model_with_separated_magnitudes(), fractions, disjoints)
def test_ties_global_scope_matches_a_dense_reference_over_several_tensors(tensors, k, disjoint):
    """trim_scope='global': per-task thresholds over ALL tensors (numpy concatenation),
    then per-tensor elect and merge; also kept >= ceil(k D) in the state."""
    bundles = [bundle_from_arrays(ts, name=f"t{i}") for i, ts in enumerate(tensors)]
    merger = TIES(keep_fraction=k, disjoint=disjoint, trim_scope="global")
    state = merger.prepare(iter(bundles))
    thresholds = ref_global_thresholds(tensors, k)
    for arrays, bundle in zip(tensors, bundles):
        expected = ref_ties(arrays, k, disjoint, thresholds=thresholds)
        assert_close(merger.merge(bundle, state).delta, expected, rtol=0)
    assert state.kept == state.targets
    total = sum(np.size(ts[0]) for ts in tensors)
    assert state.targets == tuple([ref_keep_count(k, total)] * len(tensors[0]))


@settings(max_examples=20)
@given(st.lists(task_arrays(num_tasks=st.just(2)), min_size=1, max_size=4), fractions)
def test_ties_global_trim_keeps_a_superset_within_one_histogram_bin(tensors, k):
    """Generic inputs: the global trim keeps every entry the exact threshold keeps, and
    any extra entry is within a relative 2^-12 below it (one histogram bin)."""
    bundles = [bundle_from_arrays(ts, name=f"t{i}") for i, ts in enumerate(tensors)]
    merger = TIES(keep_fraction=k, disjoint="sum", trim_scope="global")
    state = merger.prepare(bundles)
    thresholds = ref_global_thresholds(tensors, k)
    for t in range(2):
        assert state.kept[t] >= state.targets[t]
    for arrays, bundle in zip(tensors, bundles):
        masks = merger._trim_masks(bundle, state)
        for t in range(2):
            kept = masks[t].numpy()
            mags = np.abs(arrays[t])
            assert np.all(kept[mags >= thresholds[t]])
            assert np.all(mags[kept] >= thresholds[t] * (1 - 2.0**-12) * (1 - 1e-7))
