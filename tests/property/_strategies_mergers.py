"""Strategies and small helpers for the merger-family tests (not part of the public kit).

Everything is float64 and small (sides <= 12, T <= 4) so that every example's
SVDs take microseconds; inputs are constructed, not filtered.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from pactframe.testing.strategies import matrices, orthonormal_columns, spectra
from pactframe.types import LayerBundle

SIDE = st.integers(2, 12)
TASKS = st.integers(1, 4)


def bundle_from_arrays(
    task_vectors: list[np.ndarray],
    base: np.ndarray | None = None,
    *,
    name: str = "layer.weight",
    seed: int = 0,
    task_names: list[str] | None = None,
    input_axis: int = 1,
) -> LayerBundle:
    """A float64 LayerBundle from numpy arrays (base defaults to ones)."""
    arrays = [np.asarray(tv, dtype=np.float64) for tv in task_vectors]
    base_array = np.ones_like(arrays[0]) if base is None else np.asarray(base, dtype=np.float64)
    return LayerBundle(
        name=name,
        base=torch.from_numpy(base_array.copy()),
        task_vectors=[torch.from_numpy(a.copy()) for a in arrays],
        task_names=task_names or [f"task{i}" for i in range(len(arrays))],
        seed=seed,
        input_axis=input_axis,
    )


def arrays_of(bundle: LayerBundle) -> list[np.ndarray]:
    """The task vectors as numpy arrays (copies)."""
    return [tv.detach().cpu().numpy().copy() for tv in bundle.task_vectors]


def permuted(bundle: LayerBundle, order: list[int]) -> LayerBundle:
    """The same bundle with its tasks (vectors and names together) reordered."""
    return LayerBundle(
        name=bundle.name,
        base=bundle.base,
        task_vectors=[bundle.task_vectors[i] for i in order],
        task_names=[bundle.task_names[i] for i in order],
        seed=bundle.seed,
        input_axis=bundle.input_axis,
    )


def scaled(bundle: LayerBundle, factor: float) -> LayerBundle:
    """The same bundle with every task vector multiplied by ``factor``."""
    return bundle.with_task_vectors([factor * tv for tv in bundle.task_vectors])


@st.composite
def distinct_task_bundles(
    draw: st.DrawFn,
    *,
    num_tasks: st.SearchStrategy[int] = TASKS,
    rows: st.SearchStrategy[int] = SIDE,
    cols: st.SearchStrategy[int] = SIDE,
) -> LayerBundle:
    """T full-rank task vectors ``U_t diag(s_t) V_t^T`` with separated spectra and
    singular vectors from ONE seeded generator, so tasks are never identical
    (identical tasks make concatenated singular vectors rank-deficient and the
    polar factor arbitrary, in the authors' code as in ours)."""
    m, n, T = draw(rows), draw(cols), draw(num_tasks)
    r = min(m, n)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tasks = []
    for _ in range(T):
        s = draw(spectra(r)) * draw(st.floats(0.1, 1.0))
        tasks.append((orthonormal_columns(rng, m, r) * s) @ orthonormal_columns(rng, n, r).T)
    return bundle_from_arrays(tasks, rng.standard_normal((m, n)))


@st.composite
def bundles_with_full_rank_sum(
    draw: st.DrawFn, *, num_tasks: st.SearchStrategy[int] = TASKS
) -> LayerBundle:
    """T task vectors whose SUM is a constructed full-rank matrix with a separated
    spectrum (so the polar factor of the sum is unique and well conditioned):
    the first T-1 are random, the last is ``M - sum of the others``."""
    target = draw(matrices(rows=SIDE, cols=SIDE)).matrix.numpy()
    T = draw(num_tasks)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    others = [rng.standard_normal(target.shape) for _ in range(T - 1)]
    last = target - sum(others, np.zeros_like(target))
    return bundle_from_arrays([*others, last], rng.standard_normal(target.shape))


@st.composite
def orthogonal_task_bundles(draw: st.DrawFn) -> tuple[LayerBundle, int]:
    """T tasks with mutually orthogonal column AND row spaces, each of rank exactly
    ``k = r / T`` where ``r = min(m, n)``; returns ``(bundle, k)``."""
    T = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    r = T * k
    other = r + draw(st.integers(0, 4))
    m, n = (r, other) if draw(st.booleans()) else (other, r)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    u = orthonormal_columns(rng, m, r)
    v = orthonormal_columns(rng, n, r)
    tasks = []
    for t in range(T):
        s = draw(spectra(k))
        block = slice(t * k, (t + 1) * k)
        tasks.append((u[:, block] * s) @ v[:, block].T)
    return bundle_from_arrays(tasks, rng.standard_normal((m, n))), k


@st.composite
def vector_bundles(draw: st.DrawFn, *, num_tasks: st.SearchStrategy[int] = TASKS) -> LayerBundle:
    """A 1-D (bias / norm) tensor bundle with random float64 task vectors."""
    size = draw(st.integers(1, 10))
    T = draw(num_tasks)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return bundle_from_arrays(
        [rng.standard_normal(size) for _ in range(T)], rng.standard_normal(size), name="layer.bias"
    )


def permutations_of(T: int) -> st.SearchStrategy[list[int]]:
    return st.permutations(list(range(T)))


def assert_close(
    actual: torch.Tensor | np.ndarray, expected: np.ndarray, rtol: float = 1e-8
) -> None:
    """``|actual - expected| <= rtol * max(1, |expected|_max)`` elementwise (float64 tolerance)."""
    a = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    scale = max(1.0, float(np.abs(e).max(initial=0.0)))
    err = float(np.abs(a - e).max(initial=0.0))
    assert err <= rtol * scale, f"max abs error {err:.3e} > {rtol * scale:.3e}"
