"""Linear-algebra and seeding helpers, against dense NumPy references and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pactframe.linalg import (
    as_working,
    derived_rtol,
    numerical_rank,
    orth,
    polar_in_span,
    projector_distance,
    rank_rtol,
    truncated_svd,
    unit_scale_rtol,
    working_dtype,
)
from pactframe.seeding import derive_seed, generator


def basis(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    return torch.from_numpy(np.linalg.qr(rng.standard_normal((n, max(k, 1))))[0][:, :k])


def dense_projector_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    pa, pb = a.numpy() @ a.numpy().T, b.numpy() @ b.numpy().T
    return float(np.linalg.norm(pa - pb, 2))


@pytest.mark.parametrize(
    ("n", "ka", "kb"), [(9, 3, 3), (9, 1, 1), (9, 2, 5), (9, 5, 2), (9, 0, 3), (9, 0, 0), (4, 4, 4)]
)
def test_projector_distance_matches_the_dense_spectral_norm(n, ka, kb):
    rng = np.random.default_rng(n + 10 * ka + 100 * kb)
    a, b = basis(rng, n, ka), basis(rng, n, kb)
    assert projector_distance(a, b) == pytest.approx(dense_projector_distance(a, b), abs=1e-12)
    assert projector_distance(a, b) == pytest.approx(projector_distance(b, a), abs=1e-15)


def test_projector_distance_is_the_sine_of_a_small_angle():
    """Hand-worked: span(e1) and span(cos t e1 + sin t e2) are sin t apart, even at t = 1e-10."""
    for t in (1e-10, 1e-4, 0.3):
        a = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
        b = torch.tensor([[np.cos(t)], [np.sin(t)], [0.0]], dtype=torch.float64)
        assert projector_distance(a, b) == pytest.approx(np.sin(t), rel=1e-6)


def test_projector_distance_ignores_the_choice_of_basis():
    rng = np.random.default_rng(0)
    a = basis(rng, 8, 3)
    rotation = basis(rng, 3, 3)
    assert projector_distance(a, a @ rotation) < 1e-14


def test_orth_is_rank_revealing():
    rng = np.random.default_rng(0)
    left = rng.standard_normal((10, 3))
    m = torch.from_numpy(left @ rng.standard_normal((3, 7)))  # rank 3, 7 columns
    q = orth(m)
    assert q.shape == (10, 3)
    assert np.allclose(q.numpy().T @ q.numpy(), np.eye(3), atol=1e-12)
    reference = np.linalg.qr(left)[0]  # range(m) = range(left)
    assert projector_distance(q, torch.from_numpy(reference)) < 1e-10


def test_orth_of_zero_and_empty_matrices_is_empty():
    assert orth(torch.zeros(5, 3)).shape == (5, 0)
    assert orth(torch.zeros(5, 0)).shape == (5, 0)


def test_orth_of_half_precision_works_in_float32():
    m = torch.eye(4, 2, dtype=torch.bfloat16)
    q = orth(m)
    assert q.dtype == torch.float32 and q.shape == (4, 2)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_working_dtype(dtype, expected):
    assert working_dtype(dtype) == expected
    assert as_working(torch.zeros(2, dtype=dtype)).dtype == expected


def test_as_working_does_not_copy_wide_inputs():
    x = torch.zeros(3)
    assert as_working(x) is x


def test_derive_seed_depends_on_every_label_and_not_on_call_order():
    a = derive_seed(0, "enc.0.weight")
    assert a == derive_seed(0, "enc.0.weight")  # stable across calls (and processes: blake2b)
    assert a != derive_seed(1, "enc.0.weight") and a != derive_seed(0, "enc.1.weight")
    assert derive_seed(0, "w", 1) != derive_seed(0, "w", 2)
    assert derive_seed(0, "ab", "c") != derive_seed(0, "a", "bc")  # labels are separated
    assert 0 <= a < 2**63


def test_derive_seed_is_fixed_across_versions():
    """Pinned values: changing the derivation would silently change every merge."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    h.update(b"42\x00layer.weight")
    assert derive_seed(42, "layer.weight") == int.from_bytes(h.digest(), "little") >> 1


def test_generator_is_a_seeded_cpu_generator():
    g1, g2 = generator(7, "x"), generator(7, "x")
    assert g1.device.type == "cpu"
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    assert g1.initial_seed() == derive_seed(7, "x")


def test_rank_tolerances_have_their_documented_values():
    """max(m, n) eps; sqrt(eps) floors for derived and unit-scale matrices (float64, float32,
    half precision read as float32)."""
    eps64, eps32 = np.finfo(np.float64).eps, np.finfo(np.float32).eps
    assert rank_rtol((30, 7), torch.float64) == 30 * eps64
    assert rank_rtol((30, 7), torch.bfloat16) == 30 * eps32
    assert derived_rtol((30, 7), torch.float64) == np.sqrt(eps64)
    assert derived_rtol((10**9, 7), torch.float64) == 10**9 * eps64
    assert unit_scale_rtol(2.0, (30, 7), torch.float64) == np.sqrt(eps64) / 2.0
    assert unit_scale_rtol(0.0, (30, 7), torch.float32) == float("inf")


def test_numerical_rank_counts_values_above_the_tolerance_times_the_scale():
    s = torch.tensor([4.0, 2.0, 1e-3, 1e-20], dtype=torch.float64)
    assert numerical_rank(s, 1e-6) == 3  # against sigma_max = 4
    assert numerical_rank(s, 1e-6, scale=1e4) == 2  # against a larger reference
    assert numerical_rank(torch.zeros(3, dtype=torch.float64), 1e-6) == 0
    assert numerical_rank(torch.zeros(0, dtype=torch.float64), 1e-6) == 0


def test_truncated_svd_keeps_exactly_the_numerical_rank_and_reconstructs():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((9, 2)) @ rng.standard_normal((2, 6))  # rank 2
    U, S, Vh = truncated_svd(torch.from_numpy(a))
    assert U.shape == (9, 2) and S.shape == (2,) and Vh.shape == (2, 6)
    assert np.allclose((U * S) @ Vh, a, atol=1e-12)
    assert np.allclose(S.numpy(), np.linalg.svd(a, compute_uv=False)[:2], rtol=1e-12)
    empty = truncated_svd(torch.zeros(4, 3, dtype=torch.float64))
    assert [tuple(x.shape) for x in empty] == [(4, 0), (0,), (0, 3)]


def test_polar_in_span_is_the_polar_factor_at_full_rank_and_a_partial_isometry_otherwise():
    """Full column rank: U Vh of numpy's SVD. Rank-deficient [q, q] (q unit): the partial
    isometry q [1, 1] / sqrt(2), whose ranges are those of the matrix (hand-worked)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((7, 4))
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    assert np.allclose(polar_in_span(torch.from_numpy(a)).numpy(), u @ vh, atol=1e-13)
    q = np.linalg.qr(rng.standard_normal((7, 1)))[0]
    stack = np.concatenate([q, q], axis=1)
    expected = q @ np.array([[1.0, 1.0]]) / np.sqrt(2.0)
    p = polar_in_span(torch.from_numpy(stack), unit_scale=True).numpy()
    assert np.allclose(p, expected, atol=1e-13)
    assert np.allclose(p @ p.T @ p, p, atol=1e-13)  # a partial isometry
    # a second copy that differs by rounding (1e-14) is still the same direction
    noisy = np.concatenate([q, q + 1e-14 * rng.standard_normal((7, 1))], axis=1)
    p_noisy = polar_in_span(torch.from_numpy(noisy), unit_scale=True).numpy()
    assert np.allclose(p_noisy, expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(9, 6), (6, 9), (7, 7)])
def test_gram_svd_matches_numpy_svd_on_full_rank_and_reveals_a_low_rank(shape):
    """The Gram route's (U, S, Vh) against numpy's SVD: same singular values, U and Vh
    orthonormal, U S Vh = A; a rank-2 product keeps exactly 2 triplets; zero -> rank 0."""
    from pactframe.linalg import gram_polar_in_span, gram_svd

    rng = np.random.default_rng(3)
    a = rng.standard_normal(shape)
    U, S, Vh = gram_svd(torch.from_numpy(a))
    r = min(shape)
    assert U.shape == (shape[0], r) and Vh.shape == (r, shape[1])
    assert np.allclose(S.numpy(), np.linalg.svd(a, compute_uv=False), rtol=1e-10)
    assert np.allclose((U * S).numpy() @ Vh.numpy(), a, atol=1e-10)
    assert np.allclose(U.T.numpy() @ U.numpy(), np.eye(r), atol=1e-10)
    assert np.allclose(Vh.numpy() @ Vh.T.numpy(), np.eye(r), atol=1e-10)
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    assert np.allclose(gram_polar_in_span(torch.from_numpy(a)).numpy(), u @ vh, atol=1e-10)
    low = rng.standard_normal((shape[0], 2)) @ rng.standard_normal((2, shape[1]))
    U2, S2, Vh2 = gram_svd(torch.from_numpy(low))
    assert S2.shape == (2,) and np.allclose((U2 * S2).numpy() @ Vh2.numpy(), low, atol=1e-10)
    zero = gram_svd(torch.zeros(shape, dtype=torch.float64))
    assert [tuple(x.shape) for x in zero] == [(shape[0], 0), (0,), (0, shape[1])]


def test_gram_route_float32_keeps_the_rank_decisions_of_the_exact_svd():
    """float32 input with singular values down to 1e-3 of the largest (above float32's
    rank tolerance 64 * 1.2e-7): the float64 Gram route keeps all 48 directions, as the
    exact SVD does, and its polar factor agrees with numpy's to float32 accuracy."""
    from pactframe.linalg import gram_polar_in_span, gram_svd

    rng = np.random.default_rng(4)
    q1 = np.linalg.qr(rng.standard_normal((64, 48)))[0]
    q2 = np.linalg.qr(rng.standard_normal((48, 48)))[0]
    a = ((q1 * np.logspace(0, -3, 48)) @ q2.T).astype(np.float32)
    _, S, _ = gram_svd(torch.from_numpy(a))
    assert S.dtype == torch.float32 and S.shape == (48,)
    assert int(truncated_svd(torch.from_numpy(a))[1].shape[0]) == 48
    u, _, vh = np.linalg.svd(a.astype(np.float64), full_matrices=False)
    p = gram_polar_in_span(torch.from_numpy(a)).numpy()
    assert np.abs(p - u @ vh).max() <= 1e-3


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    log_cond=st.floats(0.0, 14.0),
    log_error=st.floats(-14.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_probe_accelerated_acceptance_agrees_with_the_exact_residual(n, log_cond, log_error, seed):
    """Invariant: damped_covariance's acceptance (rounding floor, then an 8-probe estimate
    of ||A X - I||_F that settles only far below the tolerance, else the exact residual)
    gives the same verdict as the exact two-sided residual test, for SPD matrices of
    condition up to 1e14 and inverses perturbed from 1e-14 to 10 relative."""
    from pactframe.linalg import _accurate_inverse, _inverse_residual

    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = (q * torch.logspace(0, -log_cond, n, dtype=torch.float64)) @ q.T
    a = 0.5 * (a + a.T)
    x = torch.linalg.inv(a)
    noise = torch.randn(n, n, generator=g, dtype=torch.float64)
    x = x + (10.0**log_error) * float(x.norm()) * (noise + noise.T) / float(
        (noise + noise.T).norm()
    )
    eye = torch.eye(n, dtype=torch.float64)
    for tolerance in (0.05, 1e-6):
        exact = _inverse_residual(a, x, eye) < tolerance
        assert _accurate_inverse(a, x, eye, tolerance) == exact
