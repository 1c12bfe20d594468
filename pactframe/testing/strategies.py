"""Hypothesis strategies that construct structured test inputs.

Matrices are built as ``U diag(s) V^T`` with Haar-random orthogonal factors
and a chosen, strictly separated spectrum, instead of filtering random
matrices with ``assume``: subspaces are then unique and projectors are
well-conditioned to compare (array-api-tests, QuTiP style).

Randomness beyond the drawn parameters comes from a drawn integer seed fed to
a NumPy generator, so Hypothesis still shrinks shapes and seeds.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from hypothesis import strategies as st

from pactframe.types import LayerBundle

#: largest side used by default: keeps float64 SVDs of every example well under a millisecond
MAX_SIDE = 24
#: default strategies (module constants, so no call runs in a default argument)
SIDES = st.integers(2, MAX_SIDE)
TASK_COUNTS = st.integers(1, 5)
TASK_SCALES = st.floats(0.05, 1.0)


@attrs.frozen(eq=False)
class ConstructedMatrix:
    """``matrix = U diag(spectrum) Vh`` with the factors used to build it."""

    matrix: torch.Tensor
    U: torch.Tensor
    spectrum: torch.Tensor
    Vh: torch.Tensor


def orthonormal_columns(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Haar-distributed ``(n, k)`` matrix with orthonormal columns (QR with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, max(k, 1))))
    q = q * np.sign(np.diag(r))
    return q[:, :k]


@st.composite
def spectra(draw: st.DrawFn, size: int, *, min_rel_gap: float = 1e-2) -> np.ndarray:
    """``size`` strictly decreasing positive values with consecutive gaps of at
    least ``min_rel_gap * max`` (entries in roughly [0.5, 3 size + 3])."""
    smallest = draw(st.floats(0.5, 3.0))
    increments = draw(
        st.lists(st.floats(1.0, 3.0), min_size=max(size - 1, 0), max_size=max(size - 1, 0))
    )
    values = smallest + np.concatenate([[0.0], np.cumsum(increments)])[::-1]
    values = values[:size]
    if size > 1:
        gaps = -np.diff(values)
        if gaps.min() < min_rel_gap * values[0]:
            # stretch the increments so every gap clears the requested threshold
            values = smallest + (values - smallest) * (min_rel_gap * values[0] / gaps.min() + 1.0)
    return values.astype(np.float64)


@st.composite
def matrices(
    draw: st.DrawFn,
    *,
    rows: st.SearchStrategy[int] = SIDES,
    cols: st.SearchStrategy[int] = SIDES,
    rank: int | None = None,
    min_rel_gap: float = 1e-2,
    dtype: torch.dtype = torch.float64,
) -> ConstructedMatrix:
    """A matrix with a chosen separated spectrum, of full rank unless ``rank`` is given."""
    m, n = draw(rows), draw(cols)
    r = min(m, n) if rank is None else min(rank, m, n)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    s = draw(spectra(r, min_rel_gap=min_rel_gap))
    u = orthonormal_columns(rng, m, r)
    v = orthonormal_columns(rng, n, r)
    a = (u * s) @ v.T
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(dtype)  # noqa: E731
    return ConstructedMatrix(t(a), t(u), t(s), t(v.T))


def spd_matrix(rng: np.random.Generator, n: int, *, condition: float = 100.0) -> np.ndarray:
    """A symmetric positive-definite ``(n, n)`` matrix with eigenvalues in ``[1/condition, 1]``."""
    q = orthonormal_columns(rng, n, n)
    eig = np.geomspace(1.0, 1.0 / condition, n)
    return (q * eig) @ q.T


@st.composite
def layer_bundles(
    draw: st.DrawFn,
    *,
    num_tasks: st.SearchStrategy[int] = TASK_COUNTS,
    rows: st.SearchStrategy[int] = SIDES,
    cols: st.SearchStrategy[int] = SIDES,
    with_covariance: bool = False,
    task_scale: st.SearchStrategy[float] = TASK_SCALES,
    dtype: torch.dtype = torch.float64,
    name: str = "layer.weight",
) -> LayerBundle:
    """A bundle for one 2-D tensor: a full-rank base with a separated spectrum and
    ``T`` full-rank task vectors with separated spectra (scaled by ``task_scale``),
    optionally with SPD covariances (condition number <= 100)."""
    m, n = draw(rows), draw(cols)
    T = draw(num_tasks)
    base = draw(matrices(rows=st.just(m), cols=st.just(n), dtype=dtype)).matrix
    tvs = []
    for _ in range(T):
        scale = draw(task_scale)
        tvs.append(scale * draw(matrices(rows=st.just(m), cols=st.just(n), dtype=dtype)).matrix)
    covs = None
    if with_covariance:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        covs = [torch.from_numpy(spd_matrix(rng, n)).to(dtype) for _ in range(T)]
    seed = draw(st.integers(0, 2**31 - 1))
    return LayerBundle(
        name=name,
        base=base,
        task_vectors=tvs,
        task_names=[f"task{i}" for i in range(T)],
        covariances=covs,
        seed=seed,
    )
