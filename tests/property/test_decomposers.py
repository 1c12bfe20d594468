"""Property tests of the three built-in decomposers and of the covariance damping.

Inputs are constructed float64 matrices ``U diag(s) V^T`` with a known, strictly
separated spectrum (``pactframe.testing.strategies``), so every expected value
below comes from the construction or from an independent dense NumPy
computation, never from the implementation under test. Tolerances are relative
to the largest singular value (float64: ~1e-9, far above rounding, far below
any real defect).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st
from pactframe_plugins.decomposers.co_svd import ContextOrientedSVD
from pactframe_plugins.decomposers.exact_svd import ExactSVD
from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD

from pactframe.errors import InputError
from pactframe.linalg import damped_covariance, projector_distance
from pactframe.testing.strategies import MAX_SIDE, matrices

from ._strategies_decomposers import gapped_matrices, sample_covariances, spd_covariances

RTOL = 1e-9


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fro(x) -> float:
    return float(np.linalg.norm(np.asarray(x), "fro"))


def dense_truncation(a: np.ndarray, r: int) -> np.ndarray:
    """Rank-``r`` truncated SVD by NumPy (the dense reference)."""
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def orthonormality_error(q: torch.Tensor) -> float:
    """``||Q^T Q - I||_F`` for a matrix with (supposedly) orthonormal columns."""
    q = q.numpy()
    return fro(q.T @ q - np.eye(q.shape[1]))


# =========================================================================== exact SVD
@given(cm=matrices())
def test_exact_svd_reproduces_the_matrix_and_its_spectrum_at_full_rank(cm):
    """Invariant: rank=None gives U diag(S) Vh = A, with S the constructed spectrum."""
    f = ExactSVD().decompose(cm.matrix)
    scale = float(cm.spectrum[0])
    assert f.rank == min(cm.matrix.shape)
    assert fro(f.reconstruct() - cm.matrix) <= RTOL * scale
    assert np.allclose(f.S.numpy(), cm.spectrum.numpy(), rtol=0, atol=RTOL * scale)
    assert orthonormality_error(f.U) <= 1e-10 and orthonormality_error(f.Vh.T) <= 1e-10


@given(data=st.data(), cm=matrices())
def test_exact_svd_truncation_is_the_best_rank_r_approximation(data, cm):
    """Invariant (Eckart-Young): the rank-r truncation A_r has ||A - A_r||_F^2 =
    sum_{j>r} s_j^2 and ||A - A_r||_2 = s_{r+1} for the constructed spectrum s;
    it equals NumPy's dense truncation, and no other rank-r matrix is closer."""
    a, s = cm.matrix.numpy(), cm.spectrum.numpy()
    r = data.draw(st.integers(0, len(s)), label="rank")
    a_r = ExactSVD().decompose(cm.matrix, r).reconstruct().numpy()
    scale = s[0]
    assert math.isclose(
        fro(a - a_r) ** 2, float(np.sum(s[r:] ** 2)), rel_tol=1e-9, abs_tol=1e-18 * scale**2 + 1e-20
    )
    if r < len(s):
        assert math.isclose(np.linalg.norm(a - a_r, 2), s[r], rel_tol=1e-9)
    assert fro(a_r - dense_truncation(a, r)) <= RTOL * scale
    # any other rank-r matrix (here a random one) is at least as far from A
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="other"))
    other = rng.standard_normal((a.shape[0], r)) @ rng.standard_normal((r, a.shape[1]))
    assert fro(a - other) >= fro(a - a_r) * (1 - 1e-12)


# =========================================================================== randomized SVD
@given(data=st.data())
def test_randomized_svd_is_exact_when_the_rank_fits_the_sketch(data):
    """Invariant: if rank(A) <= k + p (the sketch size), the sketch spans range(A),
    so the rank-k result equals the exact rank-k truncation (NumPy reference)
    for any seed and any number of power iterations."""
    true_rank = data.draw(st.integers(1, 8), label="rank(A)")
    cm = data.draw(
        matrices(
            rows=st.integers(true_rank, MAX_SIDE),
            cols=st.integers(true_rank, MAX_SIDE),
            rank=true_rank,
        )
    )
    k = data.draw(st.integers(1, true_rank + 3), label="k")
    p_min = max(0, true_rank - k)
    p = data.draw(st.integers(p_min, p_min + 6), label="oversampling")
    q = data.draw(st.integers(0, 2), label="power iterations")
    rsvd = RandomizedSVD(oversampling=p, power_iterations=q)
    f = rsvd.decompose(cm.matrix, k, generator=gen(data.draw(st.integers(0, 10**6), label="seed")))
    expected = dense_truncation(cm.matrix.numpy(), min(k, true_rank))
    assert fro(f.reconstruct().numpy() - expected) <= 1e-8 * float(cm.spectrum[0])


@settings(max_examples=15)
@given(data=st.data())
def test_randomized_svd_mean_error_is_within_the_hmt_expectation_bound(data):
    """Invariant (Halko-Martinsson-Tropp 2011, Thm 10.5): with a Gaussian sketch of
    l = k + p columns (p >= 2, no power iterations),
    E ||A - Q Q^T A||_F <= (1 + k/(p-1))^{1/2} (sum_{j>k} s_j^2)^{1/2}.
    Checked on the mean over 50 seeds with a 10% margin for the sampling error
    of the mean. Also the rank-k truncation: E ||A - A_k_hat||_F <= that bound +
    (sum_{j>k} s_j^2)^{1/2}, since ||B - B_k||_F <= the tail by interlacing."""
    cm = data.draw(matrices(rows=st.integers(8, MAX_SIDE), cols=st.integers(8, MAX_SIDE)))
    a, s = cm.matrix, cm.spectrum.numpy()
    full = len(s)
    k = data.draw(st.integers(1, full - 3), label="k")
    p = data.draw(st.integers(2, full - k - 1), label="p")
    tail = math.sqrt(float(np.sum(s[k:] ** 2)))
    bound = math.sqrt(1 + k / (p - 1)) * tail
    # Q Q^T A: a sketch of k + p columns kept whole (oversampling 0, rank = k + p)
    sketch_only = RandomizedSVD(oversampling=0, power_iterations=0)
    truncated = RandomizedSVD(oversampling=p, power_iterations=0)
    range_errors, trunc_errors = [], []
    for seed in range(50):
        qqa = sketch_only.decompose(a, k + p, generator=gen(seed)).reconstruct()
        range_errors.append(fro(a - qqa))
        a_k = truncated.decompose(a, k, generator=gen(seed)).reconstruct()
        trunc_errors.append(fro(a - a_k))
    note(f"k={k} p={p} mean range error {np.mean(range_errors):.4g} bound {bound:.4g}")
    assert np.mean(range_errors) <= 1.1 * bound
    assert np.mean(trunc_errors) <= 1.1 * (bound + tail)
    # and never better than the optimum (Eckart-Young lower bound), sample by sample
    assert min(trunc_errors) >= tail * (1 - 1e-9)


@given(data=st.data(), cm=matrices())
def test_randomized_svd_same_seed_same_result(data, cm):
    """Invariant: the result is a function of the generator's seed (never the global
    RNG); without a generator, the ``seed`` parameter seeds it."""
    k = data.draw(st.integers(1, min(cm.matrix.shape)), label="k")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    rsvd = RandomizedSVD(oversampling=2, power_iterations=1, seed=seed)
    f1 = rsvd.decompose(cm.matrix, k, generator=gen(seed))
    torch.manual_seed(seed + 1)  # disturbing the global RNG must not matter
    torch.randn(5)
    f2 = rsvd.decompose(cm.matrix, k, generator=gen(seed))
    f3 = rsvd.decompose(cm.matrix, k)
    for g in (f2, f3):
        assert torch.equal(f1.U, g.U) and torch.equal(f1.S, g.S) and torch.equal(f1.Vh, g.Vh)


@given(data=st.data(), cm=matrices())
def test_randomized_svd_factors_are_orthonormal_and_estimates_interlace(data, cm):
    """Invariants: U and Vh^T have orthonormal columns; each estimated singular value
    is at most the true one (sigma_hat_j = sigma_j(Q^T A) <= sigma_j(A),
    deterministically); the error is never below the optimal tail."""
    s = cm.spectrum.numpy()
    k = data.draw(st.integers(1, len(s)), label="k")
    rsvd = RandomizedSVD(
        oversampling=data.draw(st.integers(0, 10), label="p"),
        power_iterations=data.draw(st.integers(0, 3), label="q"),
    )
    f = rsvd.decompose(cm.matrix, k, generator=gen(data.draw(st.integers(0, 10**6), label="seed")))
    assert f.rank == k and f.shape == tuple(cm.matrix.shape) and f.orthonormal
    assert orthonormality_error(f.U) <= 1e-10
    assert orthonormality_error(f.Vh.T) <= 1e-10
    assert np.all(f.S.numpy() <= s[:k] * (1 + 1e-10))
    assert np.all(np.diff(f.S.numpy()) <= 0)
    err = fro(cm.matrix - f.reconstruct())
    assert err >= math.sqrt(float(np.sum(s[k:] ** 2))) * (1 - 1e-9)


@given(data=st.data())
def test_randomized_svd_finds_the_top_subspace_when_the_gap_is_large(data):
    """Invariant: with sigma_{k+1}/sigma_k = 1e-3 and the default oversampling (10)
    and power iterations (2), the top-k left and right singular subspaces agree with
    the exact ones (NumPy SVD) to a projector distance below 1e-8."""
    k = data.draw(st.integers(1, 8), label="k")
    cm = data.draw(gapped_matrices(top=k, gap_ratio=1e-3))
    f = RandomizedSVD().decompose(cm.matrix, k, generator=gen(data.draw(st.integers(0, 10**6))))
    u, _, vh = np.linalg.svd(cm.matrix.numpy(), full_matrices=False)
    exact_u, exact_v = torch.from_numpy(u[:, :k]), torch.from_numpy(vh[:k].T)
    assert projector_distance(f.right_basis(), exact_v) <= 1e-8
    assert projector_distance(f.left_basis(), exact_u) <= 1e-8


def test_randomized_svd_rank_none_is_exact_and_rank_zero_is_empty():
    """Regression cases at the ends of the rank range."""
    a = torch.from_numpy(np.random.default_rng(3).standard_normal((7, 5)))
    f = RandomizedSVD(power_iterations=0).decompose(a, generator=gen(0))
    assert f.rank == 5 and fro(f.reconstruct() - a) <= 1e-12 * fro(a)
    assert RandomizedSVD().decompose(a, 0, generator=gen(0)).rank == 0


# =========================================================================== CO-SVD
@given(data=st.data(), cm=matrices())
def test_co_svd_with_isotropic_covariance_is_the_truncated_svd(data, cm):
    """Invariant: C = cI (any c > 0) gives W_r = SVD_r(W), the plain truncated SVD
    (NumPy reference), with S = (1 + damping) c s (the spectrum of W C_reg)."""
    n = cm.matrix.shape[1]
    c = data.draw(st.floats(1e-3, 1e3), label="c")
    r = data.draw(st.integers(0, len(cm.spectrum)), label="rank")
    f = ContextOrientedSVD().decompose(
        cm.matrix, r, covariance=c * torch.eye(n, dtype=torch.float64)
    )
    scale = float(cm.spectrum[0])
    assert fro(f.reconstruct().numpy() - dense_truncation(cm.matrix.numpy(), r)) <= RTOL * scale
    assert np.allclose(f.S.numpy(), 1.01 * c * cm.spectrum.numpy()[:r], rtol=1e-9)


@given(data=st.data(), cm=matrices())
def test_co_svd_at_full_rank_reproduces_the_matrix(data, cm):
    """Invariant: full rank gives W back for any SPD covariance: (W C_reg) C_reg^-1 = W."""
    cov = data.draw(spd_covariances(cm.matrix.shape[1]), label="C")
    f = ContextOrientedSVD().decompose(cm.matrix, covariance=cov)
    assert not f.orthonormal and f.rank == min(cm.matrix.shape)
    assert fro(f.reconstruct() - cm.matrix) <= 1e-8 * float(cm.spectrum[0])


@given(data=st.data(), cm=matrices())
def test_co_svd_activated_error_is_the_tail_energy_of_w_c(data, cm):
    """Invariant (CorDA / PAVE eq. 6): ||(W - W_r) C_reg||_F^2 = sum_{j>r} sigma_j(W C_reg)^2,
    with C_reg = C + 0.01 mean(diag C) I built and checked here in NumPy (for these
    well-conditioned C the first damping already inverts accurately), and rank(W_r) <= r."""
    w = cm.matrix.numpy()
    n = w.shape[1]
    cov = data.draw(spd_covariances(n, max_condition=100.0), label="C").numpy()
    c_reg = cov + 0.01 * np.mean(np.diag(cov)) * np.eye(n)
    assert fro(np.linalg.inv(c_reg) @ c_reg - np.eye(n)) < 0.05  # no doubling needed
    sigma = np.linalg.svd(w @ c_reg, compute_uv=False)
    r = data.draw(st.integers(0, len(sigma)), label="rank")
    f = ContextOrientedSVD().decompose(cm.matrix, r, covariance=torch.from_numpy(cov))
    w_r = f.reconstruct().numpy()
    activated = fro((w - w_r) @ c_reg) ** 2
    tail = float(np.sum(sigma[r:] ** 2))
    assert math.isclose(activated, tail, rel_tol=1e-7, abs_tol=1e-12 * sigma[0] ** 2)
    assert np.allclose(f.S.numpy(), sigma[:r], rtol=1e-9)
    assert np.linalg.matrix_rank(w_r, tol=1e-9 * sigma[0]) <= r


def test_co_svd_needs_a_covariance_of_the_input_size():
    w = torch.ones(4, 3, dtype=torch.float64)
    with pytest.raises(InputError, match="co_svd needs an input covariance"):
        ContextOrientedSVD().decompose(w, 2)
    with pytest.raises(
        InputError, match=r"covariance has shape \(4, 4\) but the matrix \(4, 3\) needs \(3, 3\)"
    ):
        ContextOrientedSVD().decompose(w, 2, covariance=torch.eye(4, dtype=torch.float64))


def test_co_svd_half_precision_returns_float32():
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.standard_normal((6, 4))).to(torch.bfloat16)
    f = ContextOrientedSVD().decompose(w, covariance=torch.eye(4))
    assert f.S.dtype == torch.float32 and f.U.dtype == torch.float32 and f.Vh.dtype == torch.float32
    assert fro(f.reconstruct() - w.to(torch.float32)) <= 1e-5 * fro(w.to(torch.float32))


# =========================================================================== damping
@given(
    data=st.data(),
    damping=st.sampled_from([1e-20, 1e-9, 1e-3, 0.01, 0.1]),
    mode=st.sampled_from(["relative", "absolute"]),
    tolerance=st.sampled_from([0.05, 1e-3]),
)
def test_damped_covariance_postconditions(data, damping, mode, tolerance):
    """Postconditions: C_reg is symmetric positive definite; ||C_reg^-1 C_reg - I||_F <
    tolerance; eps = damping * 2^j for an integer j >= 0; and C_reg - sym(C) is
    eps * mean(diag C) * I (relative) or eps * I (absolute), checked in NumPy.
    The covariances include rank-deficient ones (fewer samples than inputs) and
    damping far too small to invert, so the doubling loop is exercised."""
    n = data.draw(st.integers(1, 16), label="n")
    cov = data.draw(sample_covariances(n), label="C")
    # absolute damping from 1e-20 on a covariance of scale 1e8 needs ~90 doublings
    c_reg, inv, eps = damped_covariance(
        cov, damping=damping, mode=mode, tolerance=tolerance, max_doublings=200
    )
    c_np, c_reg_np = cov.numpy(), c_reg.numpy()
    note(f"eps={eps:g}")
    assert c_reg.dtype == torch.float64 and inv.dtype == torch.float64
    assert np.array_equal(c_reg_np, c_reg_np.T)
    assert np.linalg.eigvalsh(c_reg_np).min() > 0
    # the residual is a postcondition on the returned pair, both sides
    eye = torch.eye(n, dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(inv @ c_reg - eye)) < tolerance
    assert float(torch.linalg.matrix_norm(c_reg @ inv - eye)) < tolerance
    # and it is not a rounding accident: the rounding floor n u cond_1(C_reg) is
    # below the tolerance too (condition number by NumPy)
    unit_roundoff = np.finfo(np.float64).eps / 2
    assert n * unit_roundoff * np.linalg.cond(c_reg_np, 1) < tolerance * (1 + 1e-6)
    j = math.log2(eps / damping)
    assert j >= -1e-9 and abs(j - round(j)) < 1e-9
    ridge = eps * (np.mean(np.diag(c_np)) if mode == "relative" else 1.0)
    sym = 0.5 * (c_np + c_np.T)
    assert np.allclose(c_reg_np - sym, ridge * np.eye(n), rtol=1e-9, atol=1e-12 * np.abs(sym).max())


def test_damping_doubles_until_a_singular_covariance_inverts():
    """Hand-worked: C = [[1, 1], [1, 1]] (rank 1), relative damping 1e-20: the ridge
    must grow by powers of two; the first accepted eps makes C_reg invertible."""
    cov = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    c_reg, _, eps = damped_covariance(cov, damping=1e-20)
    assert eps > 1e-20 and math.log2(eps / 1e-20).is_integer()
    # eigenvalues of C_reg are 2 + eps and eps (mean(diag C) = 1)
    assert np.allclose(np.linalg.eigvalsh(c_reg.numpy()), [eps, 2 + eps], rtol=1e-9)
    # the ridge is no larger than needed: it is still below float64 resolution of 2,
    # where the rank-1 C stops being numerically singular
    assert eps < 1e-12


def test_damping_gives_up_after_max_doublings_with_a_clear_error():
    cov = torch.tensor([[1e8, 1e8], [1e8, 1e8]], dtype=torch.float64)
    with pytest.raises(InputError, match=r"could not be regularised .* after 5 doublings"):
        damped_covariance(cov, damping=1e-20, mode="absolute", max_doublings=5)


def test_relative_damping_of_a_zero_covariance_raises():
    with pytest.raises(InputError, match="zero or negative mean diagonal.*mode='absolute'"):
        damped_covariance(torch.zeros(3, 3))


def test_absolute_damping_of_a_zero_covariance_is_the_ridge():
    c_reg, inv, eps = damped_covariance(torch.zeros(3, 3), damping=0.1, mode="absolute")
    assert eps == 0.1 and torch.allclose(c_reg, 0.1 * torch.eye(3, dtype=torch.float64))
    assert torch.allclose(inv, 10 * torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize(
    ("cov", "kwargs", "match"),
    [
        (torch.zeros(3, 2), {}, r"must be square \(d_in, d_in\); got \(3, 2\)"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), {}, "NaN or inf"),
        (torch.eye(2), {"mode": "median"}, "'relative' or 'absolute'; got 'median'"),
    ],
)
def test_damped_covariance_rejects_bad_input(cov, kwargs, match):
    with pytest.raises(InputError, match=match):
        damped_covariance(cov, **kwargs)


# =========================================================================== devices
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decomposers_agree_between_cpu_and_cuda(dtype):
    """The same input, rank and generator seed give the same reconstruction on CPU and
    CUDA (up to the dtype's rounding); the factors stay on the input's device."""
    rng = np.random.default_rng(0)
    s = np.linspace(10.0, 1.0, 48)
    from pactframe.testing.strategies import orthonormal_columns, spd_matrix

    a = torch.from_numpy(
        (orthonormal_columns(rng, 64, 48) * s) @ orthonormal_columns(rng, 48, 48).T
    ).to(dtype)
    cov = torch.from_numpy(spd_matrix(rng, 48)).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    cases = [
        (ExactSVD(), {}),
        (RandomizedSVD(), {}),
        (ContextOrientedSVD(), {"covariance": cov}),
    ]
    for decomposer, extra in cases:
        cpu = decomposer.decompose(a, 12, generator=gen(5), **extra)
        cuda_extra = {k: v.cuda() for k, v in extra.items()}
        gpu = decomposer.decompose(a.cuda(), 12, generator=gen(5), **cuda_extra)
        assert gpu.U.is_cuda and gpu.S.is_cuda and gpu.Vh.is_cuda
        diff = fro((gpu.reconstruct().cpu() - cpu.reconstruct()).double())
        assert diff <= tol * fro(a.double()), f"{decomposer.name}: CPU/CUDA differ by {diff:.3g}"
        assert torch.allclose(gpu.S.cpu(), cpu.S, rtol=tol)


def _flat_spectrum_matrix(
    seed: int, m: int = 120, n: int = 90, ratio: float = 0.99
) -> torch.Tensor:
    """``U diag(s) V^T`` with a slowly decaying spectrum ``s_j = ratio^j`` (no gap)."""
    g = gen(seed)
    u, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = ratio ** torch.arange(n, dtype=torch.float64)
    return (u * s) @ v.T


def _captured(a: torch.Tensor, u: torch.Tensor) -> float:
    return float((u.T @ a).square().sum())


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 8))
def test_adaptive_iterations_capture_at_least_the_energy_of_the_fixed_ones(seed, k):
    """Invariant: on a flat spectrum (s_j = 0.99^j, no gap), the adaptive stop (default
    tolerance 1e-3, at most 8 iterations for these ranks k < 0.1 * 90) captures at least
    the top-k energy of exactly q = 2 iterations from the same sketch, and never more
    than the optimum (the exact top-k energy, numpy)."""
    a = _flat_spectrum_matrix(seed)
    fixed = RandomizedSVD(tolerance=0.0).decompose(a, k, generator=gen(seed))
    adaptive = RandomizedSVD().decompose(a, k, generator=gen(seed))
    best = float(np.sum(np.linalg.svd(a.numpy(), compute_uv=False)[:k] ** 2))
    assert _captured(a, fixed.U) <= _captured(a, adaptive.U) * (1 + 1e-12)
    assert _captured(a, adaptive.U) <= best * (1 + 1e-10)


def test_adaptive_stop_counts_iterations_by_the_spectrum_and_the_rank():
    """With a clear gap (s_{k+1}/s_k = 1e-3) the adaptive stop ends after the q = 2
    iterations it always does; on a flat spectrum a small rank (k < 0.1 min(m, n)) uses
    the automatic budget of 8 and a large one (k = 30 of 90) none beyond q; with
    tolerance 0 it does exactly q (each iteration is two QR factorizations)."""
    from unittest import mock

    def iterations(decomposer, a, k):
        with mock.patch("torch.linalg.qr", wraps=torch.linalg.qr) as qr:
            decomposer.decompose(a, k, generator=gen(0))
        return (qr.call_count - 1) // 2

    g = gen(1)
    u, _ = torch.linalg.qr(torch.randn(120, 90, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(90, 90, generator=g, dtype=torch.float64))
    s = torch.cat([torch.ones(6), 1e-3 * torch.ones(84)]).double()
    gapped = (u * s) @ v.T
    flat = _flat_spectrum_matrix(2, ratio=0.999)
    assert iterations(RandomizedSVD(), gapped, 6) == 2
    assert iterations(RandomizedSVD(), flat, 6) == 8
    assert iterations(RandomizedSVD(tolerance=0.0), flat, 6) == 2
    assert iterations(RandomizedSVD(power_iterations=0, tolerance=0.0), flat, 6) == 0
    assert iterations(RandomizedSVD(max_power_iterations=4), flat, 6) == 4
    assert iterations(RandomizedSVD(), flat, 30) == 2
    assert iterations(RandomizedSVD(max_power_iterations=5), flat, 30) == 5
