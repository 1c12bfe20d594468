"""Extra strategies for the decomposer property tests (built on pactframe.testing.strategies)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from pactframe.testing.strategies import (
    MAX_SIDE,
    ConstructedMatrix,
    orthonormal_columns,
    spd_matrix,
    spectra,
)


def construct(rng: np.random.Generator, m: int, n: int, s: np.ndarray) -> ConstructedMatrix:
    """``U diag(s) V^T`` with Haar-random orthonormal ``U (m, r)``, ``V (n, r)``, float64."""
    r = len(s)
    u = orthonormal_columns(rng, m, r)
    v = orthonormal_columns(rng, n, r)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float64)

    return ConstructedMatrix(t((u * s) @ v.T), t(u), t(s), t(v.T))


@st.composite
def gapped_matrices(
    draw: st.DrawFn, *, top: int, gap_ratio: float = 1e-3, max_side: int = MAX_SIDE
) -> ConstructedMatrix:
    """A full-rank matrix whose spectrum drops by ``gap_ratio`` after the first
    ``top`` values: ``sigma_{top+1} / sigma_top = gap_ratio``, so the top-``top``
    singular subspaces are well separated from the rest."""
    m = draw(st.integers(top + 1, max_side))
    n = draw(st.integers(top + 1, max_side))
    s = draw(spectra(min(m, n)))
    s = s.copy()
    s[:top] *= s[top] / (gap_ratio * s[top - 1])
    return construct(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), m, n, s)


@st.composite
def spd_covariances(draw: st.DrawFn, n: int, *, max_condition: float = 1e4) -> torch.Tensor:
    """A symmetric positive-definite ``(n, n)`` float64 matrix with a drawn scale
    and condition number (eigenvalues geometric in ``[scale/condition, scale]``)."""
    condition = draw(st.floats(1.0, max_condition))
    scale = draw(st.floats(1e-3, 1e3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return torch.from_numpy(scale * spd_matrix(rng, n, condition=condition))


@st.composite
def sample_covariances(draw: st.DrawFn, n: int) -> torch.Tensor:
    """``X^T X / N`` from ``N`` drawn rows (rank-deficient when ``N < n``), with a
    drawn overall scale: the kind of matrix forward hooks accumulate."""
    samples = draw(st.integers(1, 2 * n))
    scale = draw(st.floats(1e-4, 1e4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = scale * rng.standard_normal((samples, n))
    return torch.from_numpy(x.T @ x / samples)
