"""A dense NumPy reference of the PACT operator, and strategies for PACT tests.

The reference is written independently of ``pactframe``: NumPy's LAPACK SVD,
explicit ``d x d`` projectors ``I - Q Q^T``, and SciPy-style rank-revealing
``orth`` with an absolute tolerance (the columns it sees have unit scale).
It follows the operator of docs/pact.md ("The operator")::

    V_0K = top-K right singular vectors of W_0
    V_tk = top-k right singular vectors of Delta_t
    V_rel_t = orth((I - V_tk V_tk^T) V_0K)
    Q_j = orth([V_rel_i for i != j]);   Delta_j' = Delta_j (I - Q_j Q_j^T)

(left side: the same with left singular vectors and ``(I - Q Q^T) Delta``).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from pactframe.testing.strategies import layer_bundles, orthonormal_columns
from pactframe.types import LayerBundle

EPS = np.finfo(np.float64).eps


def np_orth(a: np.ndarray, atol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis of range(a) for unit-scale columns: left singular vectors with
    singular value above ``atol`` (smaller ones are rounding noise of the subspaces)."""
    if a.size == 0 or a.shape[1] == 0:
        return np.zeros((a.shape[0], 0))
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return u[:, s > atol]


def np_top_basis(a: np.ndarray, r: int, side: str = "right") -> np.ndarray:
    """Top-``r`` right (``(n, r)``) or left (``(m, r)``) singular vectors, clipped to the
    numerical rank of ``a``."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    rank = 0 if s[0] == 0.0 else int((s > s[0] * max(a.shape) * EPS).sum())
    r = min(r, rank)
    return vt[:r].T if side == "right" else u[:, :r]


def np_relied(
    base: np.ndarray, delta: np.ndarray, K: int, k: int, side: str = "right"
) -> np.ndarray:
    """``V_rel = orth((I - V_tk V_tk^T) V_0K)`` with a dense ``d x d`` projector."""
    v0 = np_top_basis(base, K, side)
    vt = np_top_basis(delta, k, side)
    d = v0.shape[0]
    return np_orth((np.eye(d) - vt @ vt.T) @ v0)


def np_protect_projectors(
    base: np.ndarray, deltas: list[np.ndarray], K: int, k: int, side: str = "right"
) -> list[np.ndarray]:
    """Dense ``Pi_j = Q_j Q_j^T`` (``d x d``) for every task ``j``."""
    relied = [np_relied(base, d, K, k, side) for d in deltas]
    dim = relied[0].shape[0]
    out = []
    for j in range(len(deltas)):
        others = [r for i, r in enumerate(relied) if i != j]
        q = np_orth(np.concatenate(others, axis=1)) if others else np.zeros((dim, 0))
        out.append(q @ q.T)
    return out


def np_subspace_singular_values(
    base: np.ndarray, deltas: list[np.ndarray], K: int, k: int, side: str = "right"
) -> np.ndarray:
    """Every singular value PACT's rank decisions look at, densely: those of each relied
    residual ``(I - V_tk V_tk^T) V_0K`` and of each union ``concat_{i != j} V_rel_i``.

    The spectral gaps of ``W_0`` and ``Delta_t`` do not bound these from below: they
    depend on the angles between the tasks' top subspaces and the core, and one of
    them can land anywhere (1.3e-4 in a 42 x 49 example), where float32 and float64
    legitimately decide the rank differently."""
    v0 = np_top_basis(base, K, side)
    values = []
    relied = []
    for d in deltas:
        vt = np_top_basis(d, k, side)
        residual = v0 - vt @ (vt.T @ v0)
        values.append(np.linalg.svd(residual, compute_uv=False))
        relied.append(np_orth(residual))
    for j in range(len(deltas)):
        others = [r for i, r in enumerate(relied) if i != j]
        if others:
            values.append(np.linalg.svd(np.concatenate(others, axis=1), compute_uv=False))
    return np.concatenate(values) if values else np.zeros(0)


def np_pact(
    base: np.ndarray, deltas: list[np.ndarray], K: int, k: int, side: str = "right"
) -> list[np.ndarray]:
    """The filtered task vectors, computed densely."""
    if len(deltas) == 1 or K == 0:
        return [d.copy() for d in deltas]
    out = [d.copy() for d in deltas]
    if side in ("right", "both"):
        pis = np_protect_projectors(base, deltas, K, k, "right")
        out = [d @ (np.eye(pi.shape[0]) - pi) for d, pi in zip(out, pis)]
    if side in ("left", "both"):
        pis = np_protect_projectors(base, deltas, K, k, "left")
        out = [(np.eye(pi.shape[0]) - pi) @ d for d, pi in zip(out, pis)]
    return out


def arrays(bundle: LayerBundle) -> tuple[np.ndarray, list[np.ndarray]]:
    """Base and task vectors of a bundle as float64 NumPy arrays."""
    return bundle.base.double().numpy(), [t.double().numpy() for t in bundle.task_vectors]


# ----------------------------------------------------------------- strategies
TWO_TO_FOUR_TASKS = st.integers(2, 4)
CORE_RANKS = st.integers(1, 4)
TASK_RANKS = st.integers(1, 3)


@st.composite
def pact_cases(
    draw: st.DrawFn,
    *,
    num_tasks: st.SearchStrategy[int] = TWO_TO_FOUR_TASKS,
    core_ranks: st.SearchStrategy[int] = CORE_RANKS,
    task_ranks: st.SearchStrategy[int] = TASK_RANKS,
) -> tuple[LayerBundle, int, int]:
    """A 2-D bundle (4..16 per side, separated spectra) with ranks ``K``, ``k`` kept
    below ``d_in`` so that the relied subspaces are generically non-empty."""
    bundle = draw(
        layer_bundles(num_tasks=num_tasks, rows=st.integers(4, 16), cols=st.integers(6, 16))
    )
    return bundle, draw(core_ranks), draw(task_ranks)


@st.composite
def gapped_bundles(draw: st.DrawFn, *, core_rank: int, task_rank: int) -> LayerBundle:
    """A ``(m, n)`` bundle (40..60 x 36..50) whose base has a spectral gap after
    ``core_rank`` (top values in [10, 20], the rest in [0.01, 0.1]) and whose task
    vectors have a gap after ``task_rank`` (top in [1, 2], the rest in [1e-3, 1e-2]),
    so the top subspaces that PACT needs are well separated."""
    m, n = draw(st.integers(40, 60)), draw(st.integers(36, 50))
    T = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    r = min(m, n)

    def gapped(top: int, hi: tuple[float, float], lo: tuple[float, float]) -> torch.Tensor:
        s = np.concatenate(
            [np.sort(rng.uniform(*hi, top))[::-1], np.sort(rng.uniform(*lo, r - top))[::-1]]
        )
        u, v = orthonormal_columns(rng, m, r), orthonormal_columns(rng, n, r)
        return torch.from_numpy((u * s) @ v.T)

    return LayerBundle(
        name="layers.0.mlp.weight",
        base=gapped(core_rank, (10.0, 20.0), (0.01, 0.1)),
        task_vectors=[gapped(task_rank, (1.0, 2.0), (1e-3, 1e-2)) for _ in range(T)],
        task_names=[f"task{t}" for t in range(T)],
        seed=draw(st.integers(0, 2**31 - 1)),
    )
