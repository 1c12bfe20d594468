"""The algebraic invariants of the PACT filter (docs/pact.md, "The operator"; docs/invariants.md).

One test per invariant, numbered as in that section; invariant 11 (intrusion
energy) is in ``test_intrusion_energy.py``. Subspaces and projectors that a
test needs are computed independently with NumPy (``_pact_reference``).
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from pactframe_plugins.preprocessors.pact import PACTAligner

from pactframe.types import LayerBundle
from tests.property._pact_reference import (
    arrays,
    np_protect_projectors,
    np_relied,
    pact_cases,
)

TOL = 1e-9


def run_pact(bundle: LayerBundle, K: int, k: int, **kwargs) -> list[np.ndarray]:
    out = PACTAligner(core_rank=K, task_rank=k, **kwargs).preprocess(bundle)
    return [t.numpy() for t in out.task_vectors]


def replace_tasks(bundle: LayerBundle, tasks: list[np.ndarray], base: np.ndarray | None = None):
    new = bundle.with_task_vectors([torch.from_numpy(np.ascontiguousarray(t)) for t in tasks])
    if base is not None:
        new = attrs.evolve(new, base=torch.from_numpy(np.ascontiguousarray(base)))
    return new


@given(pact_cases())
def test_1_other_tasks_anchored_subspaces_are_preserved(case):
    """Invariant 1: Delta_j' V_rel_i = 0 for every i != j, so after Task Arithmetic
    (sum_j Delta_j') V_rel_i = Delta_i' V_rel_i: no other task writes into task i's
    load-bearing subspace. V_rel_i is computed with NumPy, independently."""
    bundle, K, k = case
    base, deltas = arrays(bundle)
    out = run_pact(bundle, K, k)
    relied = [np_relied(base, d, K, k) for d in deltas]
    note(f"relied dims {[r.shape[1] for r in relied]}")
    for j, dj in enumerate(out):
        for i, vi in enumerate(relied):
            if i != j:
                assert np.linalg.norm(dj @ vi) <= TOL * max(1.0, np.linalg.norm(deltas[j]))
    total = sum(out)
    for i, vi in enumerate(relied):
        np.testing.assert_allclose(total @ vi, out[i] @ vi, atol=TOL * 10)


@given(pact_cases())
def test_2_filter_is_idempotent_for_a_fixed_protect_space(case):
    """Invariant 2: F_j(F_j(Delta_j)) = F_j(Delta_j). Task j's protect space depends
    only on W_0 and the OTHER tasks, so feeding Delta_j' back in place of Delta_j
    (others unchanged) keeps it fixed, and task j must come back unchanged."""
    bundle, K, k = case
    _, deltas = arrays(bundle)
    once = run_pact(bundle, K, k)
    for j in range(len(deltas)):
        swapped = [once[j] if i == j else d for i, d in enumerate(deltas)]
        twice = run_pact(replace_tasks(bundle, swapped), K, k)
        np.testing.assert_allclose(twice[j], once[j], atol=TOL)


@given(pact_cases())
def test_3_frobenius_and_spectral_norms_never_grow(case):
    """Invariant 3: ||Delta_j'||_F <= ||Delta_j||_F and ||Delta_j'||_2 <= ||Delta_j||_2."""
    bundle, K, k = case
    _, deltas = arrays(bundle)
    for before, after in zip(deltas, run_pact(bundle, K, k)):
        assert np.linalg.norm(after) <= np.linalg.norm(before) * (1 + TOL)
        assert np.linalg.norm(after, 2) <= np.linalg.norm(before, 2) * (1 + TOL)


@given(pact_cases())
def test_4_orthogonal_split_with_the_pythagorean_identity(case):
    """Invariant 4: Delta_j = Delta_j' + Delta_j Pi_j with <Delta_j', Delta_j Pi_j>_F = 0,
    hence ||Delta_j||^2 = ||Delta_j'||^2 + ||Delta_j Pi_j||^2; Pi_j is the NumPy projector."""
    bundle, K, k = case
    base, deltas = arrays(bundle)
    pis = np_protect_projectors(base, deltas, K, k)
    for d, f, pi in zip(deltas, run_pact(bundle, K, k), pis):
        removed = d - f
        np.testing.assert_allclose(removed, d @ pi, atol=TOL)
        assert abs(np.sum(f * removed)) <= TOL * np.sum(d * d)
        np.testing.assert_allclose(
            np.sum(d * d), np.sum(f * f) + np.sum(removed * removed), rtol=1e-10
        )


@given(pact_cases(num_tasks=st.just(1)), st.sampled_from(["right", "left", "both"]))
def test_5_single_task_is_the_identity(case, side):
    """Invariant 5: with T = 1 the protect set is empty, so PACT returns Delta exactly."""
    bundle, K, k = case
    out = PACTAligner(core_rank=K, task_rank=k, side=side).preprocess(bundle)
    assert torch.equal(out.task_vectors[0], bundle.task_vectors[0])


@given(
    pact_cases(),
    st.floats(0.01, 100.0),
    st.floats(0.01, 100.0).flatmap(lambda c: st.sampled_from([c, -c])),
    st.floats(0.01, 100.0).flatmap(lambda c: st.sampled_from([c, -c])),
)
def test_6_positive_homogeneity_and_invariance_to_rescaling_others_and_base(
    case, c_own, c_others, c_base
):
    """Invariant 6: PACT(c Delta_j; others)_j = c PACT(Delta_j; others)_j for c > 0, and
    task j's output is unchanged when the other tasks or W_0 are scaled by c != 0."""
    bundle, K, k = case
    base, deltas = arrays(bundle)
    ref = run_pact(bundle, K, k)
    for j in range(len(deltas)):
        own = [c_own * d if i == j else d for i, d in enumerate(deltas)]
        np.testing.assert_allclose(
            run_pact(replace_tasks(bundle, own), K, k)[j], c_own * ref[j], atol=TOL * c_own
        )
        others = [d if i == j else c_others * d for i, d in enumerate(deltas)]
        np.testing.assert_allclose(
            run_pact(replace_tasks(bundle, others, c_base * base), K, k)[j], ref[j], atol=TOL
        )


@given(pact_cases(), st.randoms(use_true_random=False))
def test_7_permutation_equivariance_over_tasks(case, rnd):
    """Invariant 7: permuting the tasks permutes the filtered task vectors the same way."""
    bundle, K, k = case
    _, deltas = arrays(bundle)
    perm = list(range(len(deltas)))
    rnd.shuffle(perm)
    ref = run_pact(bundle, K, k)
    permuted = replace_tasks(bundle, [deltas[p] for p in perm])
    out = run_pact(permuted, K, k)
    for position, p in enumerate(perm):
        np.testing.assert_allclose(out[position], ref[p], atol=TOL)


@given(pact_cases(num_tasks=st.integers(2, 5), core_ranks=st.integers(1, 6)))
def test_8_protect_projector_rank_is_bounded(case):
    """Invariant 8: rank(Pi_j) <= min(d_in, K + (T-1) k) and <= min(d_in, (T-1) K).
    Checked on the reported protect dimension (which must equal the NumPy rank of the
    union of the other tasks' V_rel) and on the rank of the removed part Delta_j Pi_j."""
    bundle, K, k = case
    base, deltas = arrays(bundle)
    T, d_in = len(deltas), base.shape[1]
    K_eff, k_eff = min(K, min(base.shape)), min(k, min(base.shape))
    bound = min(d_in, K_eff + (T - 1) * k_eff, (T - 1) * K_eff)
    out = PACTAligner(core_rank=K, task_rank=k).preprocess(bundle)
    dims = out.records[-1].data["right"]["protect_dims"]
    pis = np_protect_projectors(base, deltas, K, k)
    for j, (name, d) in enumerate(zip(bundle.task_names, deltas)):
        assert dims[name] == round(np.trace(pis[j])) <= bound
        removed = d - out.task_vectors[j].numpy()
        assert np.linalg.matrix_rank(removed, tol=1e-8 * np.linalg.norm(d, 2)) <= bound


@given(pact_cases(core_ranks=st.just(0)), st.sampled_from(["right", "left", "both"]))
def test_9a_zero_core_rank_is_the_identity(case, side):
    """Invariant 9: K = 0 gives an empty pre-trained core, hence the identity."""
    bundle, _, k = case
    out = PACTAligner(core_rank=0, task_rank=k, side=side).preprocess(bundle)
    for a, b in zip(out.task_vectors, bundle.task_vectors):
        assert torch.equal(a, b)


@given(pact_cases(task_ranks=st.just(10_000)))
def test_9b_task_rank_covering_d_in_gives_empty_relied_spaces_and_the_identity(case):
    """Invariant 9: k >= d_in with full-column-rank Delta_t (the strategy's task vectors
    are full rank) makes V_tk span R^{d_in}, so every V_rel_t is empty and PACT is the
    identity (up to rounding), when d_in <= d_out."""
    bundle, K, k = case
    if bundle.base.shape[1] > bundle.base.shape[0]:
        bundle = bundle.map_tensors(lambda x: x.transpose(0, 1).contiguous())
    out = PACTAligner(core_rank=K, task_rank=k).preprocess(bundle)
    assert set(out.records[-1].data["right"]["relied_dims"].values()) == {0}
    for a, b in zip(out.task_vectors, bundle.task_vectors):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)


@given(pact_cases(), st.integers(0, 2**32 - 1))
def test_10_action_on_the_row_space_only(case, seed):
    """Invariant 10: Delta_j' x = Delta_j x for every x orthogonal to range(Pi_j), and
    the left null space is untouched: y^T Delta_j = 0 implies y^T Delta_j' = 0."""
    bundle, K, k = case
    base, deltas = arrays(bundle)
    rng = np.random.default_rng(seed)
    pis = np_protect_projectors(base, deltas, K, k)
    for d, f, pi in zip(deltas, run_pact(bundle, K, k), pis):
        x = (np.eye(pi.shape[0]) - pi) @ rng.standard_normal((pi.shape[0], 3))
        np.testing.assert_allclose(f @ x, d @ x, atol=TOL)
        u, s, _ = np.linalg.svd(d, full_matrices=True)
        left_null = u[:, int((s > 1e-12 * s[0]).sum()) :]
        assert np.linalg.norm(left_null.T @ f) <= TOL
