"""ASVD and SVD-LLM decomposers against numpy references and the optimality identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.decomposers.asvd import ActivationAwareSVD
from pactframe_plugins.decomposers.co_svd import ContextOrientedSVD
from pactframe_plugins.decomposers.exact_svd import ExactSVD
from pactframe_plugins.decomposers.svd_llm import WhitenedSVD

from pactframe.errors import InputError
from pactframe.testing import check_component
from pactframe.testing.strategies import matrices
from tests.property._pave_reference import truncated_svd


@st.composite
def weight_and_inputs(draw, min_tokens_factor: int = 2):
    """A weight W (m, n) with separated spectrum and token rows X (N, n) with
    correlated, unequally scaled channels; C = X^T X / N."""
    w = draw(matrices(rows=st.integers(2, 12), cols=st.integers(2, 12))).matrix.numpy()
    n = w.shape[1]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mix = rng.standard_normal((n, n)) * rng.uniform(0.1, 3.0, n)
    x = rng.standard_normal((min_tokens_factor * n + 5, n)) @ mix
    rank = draw(st.integers(1, min(w.shape)))
    return w, x, rank


def _approx(decomposer, w: np.ndarray, c: np.ndarray, rank: int) -> np.ndarray:
    f = decomposer.decompose(torch.from_numpy(w), rank, covariance=torch.from_numpy(c))
    return f.reconstruct().numpy()


def _activation_error(w: np.ndarray, w_approx: np.ndarray, x: np.ndarray) -> float:
    """||(W - W') X^T||_F over the actual token rows."""
    return float(np.linalg.norm((w - w_approx) @ x.T))


@settings(max_examples=40)
@given(weight_and_inputs())
def test_svd_llm_activation_error_is_at_most_co_svd_and_plain_svd_at_equal_rank(case):
    """SVD-LLM is the optimal rank-r activation-weighted approximation: its error
    ||(W - W')X^T||_F is <= CO-SVD's and <= the plain truncated SVD's."""
    w, x, r = case
    c = x.T @ x / x.shape[0]
    e_llm = _activation_error(w, _approx(WhitenedSVD(), w, c, r), x)
    e_co = _activation_error(w, _approx(ContextOrientedSVD(), w, c, r), x)
    e_svd = _activation_error(w, _approx(ExactSVD(), w, c, r), x)
    tol = 1e-9 * (np.linalg.norm(w @ x.T) + 1.0)
    assert e_llm <= e_co + tol
    assert e_llm <= e_svd + tol


@settings(max_examples=40)
@given(weight_and_inputs())
def test_svd_llm_error_equals_the_whitened_tail_energy(case):
    """||(W - W')X^T||_F^2 = N sum_{j>r} sigma_j(W L)^2 with L = chol(X^T X / N) (numpy),
    and W' = SVD_r(W L) L^-1."""
    w, x, r = case
    n_tokens = x.shape[0]
    c = x.T @ x / n_tokens
    L = np.linalg.cholesky(c)
    sigma = np.linalg.svd(w @ L, compute_uv=False)
    w_llm = _approx(WhitenedSVD(), w, c, r)
    assert _activation_error(w, w_llm, x) ** 2 == pytest.approx(
        n_tokens * np.sum(sigma[r:] ** 2), rel=1e-7, abs=1e-12 * n_tokens * sigma[0] ** 2
    )
    np.testing.assert_allclose(
        w_llm, truncated_svd(w @ L, r) @ np.linalg.inv(L), atol=1e-8 * np.linalg.norm(w)
    )


@settings(max_examples=30)
@given(weight_and_inputs(), st.sampled_from(["rms", "abs_row_mean"]), st.sampled_from([0.5, 1.0]))
def test_asvd_equals_the_numpy_scaled_svd(case, scaling, alpha):
    """ASVD: W' = SVD_r(W S) S^-1 with S = diag(m^alpha + 1e-6 max), m = sqrt(diag C)
    ('rms') or mean_j |C_ij| ('abs_row_mean'), computed in numpy."""
    w, x, r = case
    c = x.T @ x / x.shape[0]
    m = np.sqrt(np.diag(c)) if scaling == "rms" else np.abs(c).mean(axis=1)
    s = m**alpha
    s = s + 1e-6 * s.max()
    expected = truncated_svd(w * s, r) / s
    got = _approx(ActivationAwareSVD(alpha=alpha, scaling=scaling), w, c, r)
    np.testing.assert_allclose(got, expected, atol=1e-9 * np.linalg.norm(w))


@settings(max_examples=20)
@given(
    matrices(rows=st.integers(2, 10), cols=st.integers(2, 10)), st.floats(0.01, 100.0), st.data()
)
def test_scaled_identity_covariance_gives_plain_truncated_svd(a, c, data):
    """C = cI: ASVD and SVD-LLM both reduce to SVD_r(W) (the scale cancels)."""
    w = a.matrix.numpy()
    r = data.draw(st.integers(1, min(w.shape)))
    cov = c * np.eye(w.shape[1])
    for decomposer in (ActivationAwareSVD(), WhitenedSVD()):
        np.testing.assert_allclose(
            _approx(decomposer, w, cov, r), truncated_svd(w, r), atol=1e-9 * np.linalg.norm(w)
        )


def test_svd_llm_on_a_singular_covariance_gets_the_smallest_working_ridge():
    """Rank-deficient inputs (fewer tokens than channels): Cholesky of C fails, a tiny
    ridge is added, and the full-rank reconstruction is still W."""
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((5, 8)), rng.standard_normal((3, 8))
    c = x.T @ x / 3
    f = WhitenedSVD().decompose(torch.from_numpy(w), None, covariance=torch.from_numpy(c))
    assert np.all(np.isfinite(f.Vh.numpy()))
    np.testing.assert_allclose(f.reconstruct().numpy(), w, atol=1e-6 * np.linalg.norm(w))


@pytest.mark.parametrize("decomposer", [ActivationAwareSVD(), WhitenedSVD()])
def test_errors_name_the_decomposer_and_the_problem(decomposer):
    w = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(InputError, match=f"{decomposer.name} needs an input covariance"):
        decomposer.decompose(w, 2)
    with pytest.raises(InputError, match=r"needs \(3, 3\)"):
        decomposer.decompose(w, 2, covariance=torch.eye(4))
    with pytest.raises(InputError, match="NaN"):
        decomposer.decompose(w, 2, covariance=torch.full((3, 3), float("nan")))
    with pytest.raises(InputError, match="no .*inputs|zero"):
        decomposer.decompose(w, 2, covariance=torch.zeros(3, 3))


@pytest.mark.parametrize(
    "decomposer",
    [
        ActivationAwareSVD(),
        ActivationAwareSVD(scaling="abs_row_mean", alpha=1.0),
        WhitenedSVD(),
        WhitenedSVD(damping=0.01),
    ],
)
def test_asvd_and_svd_llm_pass_the_component_contract(decomposer):
    check_component(decomposer)
