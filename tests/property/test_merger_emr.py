"""Invariants (docs/invariants.md) of EMR-Merging (Huang et al., NeurIPS 2024)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers.emr import EMR

from tests.property._references_mergers import ref_emr
from tests.property._strategies_mergers import assert_close, bundle_from_arrays, permuted

shapes = st.sampled_from([(3, 4), (5,), (), (2, 2), (1, 6)])


@st.composite
def models(draw, num_tasks=None, sparse=True):
    """A few tensors of mixed shapes for T tasks, optionally with exact zeros."""
    T = draw(num_tasks if num_tasks is not None else st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tensors = []
    for s in draw(st.lists(shapes, min_size=1, max_size=4)):
        arrays = []
        for _ in range(T):
            a = np.asarray(rng.standard_normal(s) * rng.uniform(0.1, 5.0))
            if sparse:
                a = np.where(rng.random(s) < 0.2, 0.0, a)
            arrays.append(np.asarray(a))
        tensors.append(arrays)
    return tensors


def bundles_of(tensors):
    return [bundle_from_arrays(ts, name=f"layer{i}") for i, ts in enumerate(tensors)]


def merge_model(tensors, merger=None):
    merger = merger or EMR()
    bundles = bundles_of(tensors)
    state = merger.prepare(iter(bundles))
    return [merger.merge(b, state) for b in bundles], state


@given(models(num_tasks=st.just(1)))
def test_emr_single_task_reconstructs_it_exactly(tensors):
    """T = 1: lambda = 1, mask = (tau != 0), so task_delta(0) == tau bit for bit."""
    outs, state = merge_model(tensors)
    assert state.scales == (1.0,)
    for out, arrays in zip(outs, tensors):
        assert torch.equal(out.task_delta(0), torch.from_numpy(arrays[0]))


@given(models())
def test_emr_reconstruction_keeps_each_tasks_signs(tensors):
    """sign(recon_t) = sign(Delta_t) wherever recon_t != 0."""
    outs, _ = merge_model(tensors)
    for out, arrays in zip(outs, tensors):
        for t, delta in enumerate(arrays):
            recon = out.task_delta(t).numpy()
            nonzero = recon != 0
            assert np.all(np.sign(recon[nonzero]) == np.sign(delta[nonzero]))


@given(models())
def test_emr_unified_magnitude_dominates_each_task_on_its_mask(tensors):
    """|tau_uni| >= |Delta_t| wherever mask_t is set."""
    outs, _ = merge_model(tensors)
    for out, arrays in zip(outs, tensors):
        for mask, delta in zip(out.task_masks, arrays):
            m = mask.numpy()
            assert np.all(np.abs(out.delta.numpy())[m] >= np.abs(delta)[m])


@given(models())
def test_emr_rescaler_matches_its_definition_as_a_sum_of_per_tensor_means(tensors):
    """lambda_t * sum_k mean|tau_uni,k * M_t,k| = sum_k mean|Delta_t,k| (numpy sums)."""
    outs, state = merge_model(tensors)
    for t in range(len(tensors[0])):
        lhs = sum(np.abs(o.delta.numpy() * o.task_masks[t].numpy()).mean() for o in outs)
        rhs = sum(np.abs(arrays[t]).mean() for arrays in tensors)
        if lhs > 0:
            assert abs(state.scales[t] * lhs - rhs) <= 1e-12 * max(rhs, 1.0)


@given(models(num_tasks=st.integers(1, 3)), st.integers(0, 2))
def test_emr_tasks_with_identical_vectors_get_identical_outputs(tensors, which):
    """Append a copy of one task: the copy's mask, scale and task delta equal the original's."""
    which = which % len(tensors[0])
    extended = [[*arrays, arrays[which]] for arrays in tensors]
    outs, state = merge_model(extended)
    assert state.scales[-1] == state.scales[which]
    for out in outs:
        assert torch.equal(out.task_delta(len(extended[0]) - 1), out.task_delta(which))


@given(models(num_tasks=st.integers(2, 4)), st.data())
def test_emr_is_permutation_equivariant(tensors, data):
    """Permuting tasks permutes masks, scales and task deltas; the unified vector is unchanged."""
    order = data.draw(st.permutations(list(range(len(tensors[0])))))
    bundles = bundles_of(tensors)
    merger = EMR()
    state = merger.prepare(bundles)
    shuffled = [permuted(b, order) for b in bundles]
    state_p = merger.prepare(shuffled)
    for position, t in enumerate(order):
        assert abs(state_p.scales[position] - state.scales[t]) <= 1e-12 * state.scales[t]
    for b, bp in zip(bundles, shuffled):
        out, out_p = merger.merge(b, state), merger.merge(bp, state_p)
        assert_close(out_p.delta, out.delta.numpy(), rtol=1e-13)
        for position, t in enumerate(order):
            assert out_p.task_names[position] == out.task_names[t]
            assert torch.equal(out_p.task_masks[position], out.task_masks[t])
            assert_close(out_p.task_delta(position), out.task_delta(t).numpy(), rtol=1e-12)


@settings(max_examples=30)
@given(models(), st.floats(0.2, 2.0))
def test_emr_matches_a_dense_reference_over_a_model(tensors, scaling):
    """Unified vector, masks, whole-model lambdas and task deltas against numpy."""
    outs, state = merge_model(tensors, EMR(scaling=scaling))
    unified, masks, lambdas = ref_emr(tensors)
    assert np.allclose(state.scales, lambdas, rtol=1e-12, atol=0)
    for out, tau, task_masks in zip(outs, unified, masks):
        assert_close(out.delta, scaling * tau, rtol=1e-14)
        for t, mask in enumerate(task_masks):
            assert np.array_equal(out.task_masks[t].numpy(), mask)
            assert_close(out.task_delta(t), scaling * lambdas[t] * mask * tau, rtol=1e-12)
