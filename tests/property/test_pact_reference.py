"""PACT against the dense NumPy reference (``_pact_reference.np_pact``), on every
side and layout, and Efficient PACT (randomized SVD) against exact PACT."""

from __future__ import annotations

import attrs
import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD
from pactframe_plugins.preprocessors.pact import PACTAligner

from tests.property._pact_reference import (
    arrays,
    gapped_bundles,
    np_pact,
    np_subspace_singular_values,
    pact_cases,
)

SIDES = st.sampled_from(["right", "left", "both"])


@given(pact_cases(), SIDES)
def test_pact_equals_the_dense_numpy_reference(case, side):
    """PACT(bundle) equals the dense d x d projector computation on every side."""
    bundle, K, k = case
    base, deltas = arrays(bundle)
    out = PACTAligner(core_rank=K, task_rank=k, side=side).preprocess(bundle)
    for got, want in zip(out.task_vectors, np_pact(base, deltas, K, k, side)):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


@given(pact_cases(), SIDES)
def test_transposed_layout_filters_the_input_side(case, side):
    """With input_axis = 0 (Conv1D layout (d_in, d_out)) PACT acts on the input side:
    the result is the transpose of PACT on the (d_out, d_in) layout."""
    bundle, K, k = case
    transposed = attrs.evolve(
        bundle.map_tensors(lambda x: x.transpose(0, 1).contiguous()), input_axis=0
    )
    base, deltas = arrays(bundle)
    out = PACTAligner(core_rank=K, task_rank=k, side=side).preprocess(transposed)
    for got, want in zip(out.task_vectors, np_pact(base, deltas, K, k, side)):
        np.testing.assert_allclose(got.numpy().T, want, atol=1e-9)


@settings(max_examples=20)
@given(st.integers(1, 4), st.integers(1, 3), st.data())
def test_float32_input_is_computed_and_returned_in_float32(K, k, data):
    """float32 in, float32 out, within float32 accuracy of the float64 reference.

    On well-conditioned cases: spectral gaps after K and k, AND every singular value
    of the relied residuals and their unions either a structural zero (<= 1e-10) or
    >= 1e-2, far from float32's sqrt(eps) = 3.5e-4 rank floor. The gaps alone do not
    give the second condition (np_subspace_singular_values); where a union has a
    singular value near that floor (1.3e-4 in a stored 42 x 49 example), float32 and
    float64 legitimately decide its rank differently, and no float32 result is close
    to the float64 one."""
    bundle = data.draw(gapped_bundles(core_rank=K, task_rank=k))
    base, deltas = arrays(bundle)
    values = np_subspace_singular_values(base, deltas, K, k)
    assume(bool(np.all((values <= 1e-10) | (values >= 1e-2))))
    out = PACTAligner(core_rank=K, task_rank=k).preprocess(bundle.map_tensors(lambda x: x.float()))
    for got, want, d in zip(out.task_vectors, np_pact(base, deltas, K, k), deltas):
        assert got.dtype == torch.float32
        assert np.linalg.norm(got.double().numpy() - want) <= 1e-4 * np.linalg.norm(d)


@settings(max_examples=20)
@given(st.integers(1, 4), st.integers(1, 3), st.data())
def test_efficient_pact_agrees_with_exact_pact_when_the_spectra_have_a_gap(K, k, data):
    """Efficient PACT (randomized_svd, oversampling 10, 2 power iterations) gives the
    same filtered vectors as exact PACT when W_0 has a gap after K and every Delta_t a
    gap after k (sigma_{K+1}/sigma_K <= 0.01): relative Frobenius error <= 1e-6."""
    bundle = data.draw(gapped_bundles(core_rank=K, task_rank=k))
    exact = PACTAligner(core_rank=K, task_rank=k).preprocess(bundle)
    fast = PACTAligner(core_rank=K, task_rank=k, decomposer=RandomizedSVD()).preprocess(bundle)
    for a, b in zip(fast.task_vectors, exact.task_vectors):
        assert float(torch.linalg.norm(a - b) / torch.linalg.norm(b)) <= 1e-6
