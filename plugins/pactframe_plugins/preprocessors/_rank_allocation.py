"""PAVE's spectral rank allocation (Algorithm 1 of the PAVE paper).

Sun et al., "Purifying Task Vectors in Knowledge-Aware Subspace" (PAVE),
Sec. 3.3, eq. 7-9 and Algorithm 1. For one layer ``l`` shared by ``K`` models,
with ``sigma_{i,j}`` the singular values of ``W_i C_i`` (descending) and
``s_{i,j} = sigma_{i,j} / sigma_{i,max}`` (eq. 8), the allocation solves
eq. 9::

    min_{r_1..r_K}  sum_i sum_{j > r_i} s_{i,j}^2
    s.t.            sum_i r_i <= rho K R,     r_i >= floor,     R = min(d_out, d_in)

greedily: start from ``r_i = R`` and, while ``sum_i r_i / (K R) > rho``
(the paper's strict rule), drop the last kept component of the model whose
last kept normalized value ``s_{i, r_i}`` is the smallest, among models still
above the stopping ratio ``gamma = rho - (1 - rho) / 2``; a model leaves the
candidate set once ``r_i <= gamma R`` (so its floor is ``floor(gamma R)``,
and never below 1). Because every ``s_i`` is sorted descending, the greedy
removes exactly the globally smallest removable normalized values, which is
optimal for eq. 9.

Per model (Algorithm 1, line 15): ``rho_i = sum_l r_i^l / sum_l R^l`` over the
layers model ``i`` takes part in.

Exact arithmetic: a float ``rho`` is read as the nearest fraction with a
denominator up to 10^6 (so ``0.9`` is 9/10 and ``2/3`` is 2/3, not a binary
approximation just below), and the budget ``floor(rho K R)`` and the floor
``gamma R`` are computed as fractions. Ties between models are broken
by the lower model index.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import attrs
import numpy as np
import torch

from pactframe.errors import InputError

__all__ = [
    "RankAllocation",
    "allocate_layer",
    "normalized_spectrum",
    "normalized_tail_energy",
    "rank_floor",
    "spectral_rank_allocation",
    "stopping_ratio",
]


def _fraction(rho: float) -> Fraction:
    if isinstance(rho, bool) or not isinstance(rho, (int, float, Fraction)) or not 0 < rho <= 1:
        raise InputError(
            f"Spectral rank allocation: the preserved ratio rho must be a number in (0, 1]; "
            f"got {rho!r}."
        )
    return rho if isinstance(rho, Fraction) else Fraction(float(rho)).limit_denominator(10**6)


def stopping_ratio(rho: float) -> float:
    """``gamma = rho - (1 - rho) / 2`` (PAVE, Algorithm 1 and Sec. 4 defaults)."""
    r = _fraction(rho)
    return float(r - (1 - r) / 2)


def rank_floor(full_rank: int, rho: float) -> int:
    """Smallest rank the allocation leaves a model with: ``max(1, floor(gamma R))``."""
    r = _fraction(rho)
    gamma = r - (1 - r) / 2
    return max(1, math.floor(gamma * full_rank))


def normalized_spectrum(singular_values: Any) -> np.ndarray:
    """``s_j = sigma_j / sigma_max`` in float64, sorted descending (eq. 8).

    A zero spectrum (a zero ``W C``) gives all zeros.
    """
    if isinstance(singular_values, torch.Tensor):
        singular_values = singular_values.detach().to("cpu", torch.float64).numpy()
    s = np.sort(np.asarray(singular_values, dtype=np.float64).ravel())[::-1]
    if s.size == 0 or not np.all(np.isfinite(s)) or s[-1] < 0:
        raise InputError(
            "Spectral rank allocation: singular values must be a non-empty list of finite, "
            f"non-negative numbers; got {s.tolist()[:8]}."
        )
    return s / s[0] if s[0] > 0 else np.zeros_like(s)


def normalized_tail_energy(normalized: np.ndarray, rank: int) -> float:
    """Eq. 8: ``sum_{j > r} s_j^2``, the normalized activated pruning error."""
    return float(np.sum(np.square(normalized[rank:])))


def allocate_layer(spectra: Sequence[Any], rho: float) -> tuple[int, ...]:
    """Per-model ranks ``r_i`` of one layer (Algorithm 1, lines 3-13).

    Args:
        spectra: ``K`` singular-value vectors of ``W_i C_i``, all of length ``R``
            (any scale, any order: each is normalized by its own maximum).
        rho: preserved rank ratio in ``(0, 1]``.

    Returns:
        ``K`` ranks, each in ``[rank_floor(R, rho), R]``, with
        ``sum r_i <= floor(rho K R)`` unless every model reached its floor.
    """
    if len(spectra) == 0:
        raise InputError("Spectral rank allocation: a layer needs at least one model's spectrum.")
    s = [normalized_spectrum(v) for v in spectra]
    full = {len(v) for v in s}
    if len(full) != 1:
        raise InputError(
            "Spectral rank allocation: the models of one layer must share the full rank R; got "
            f"spectra of lengths {[len(v) for v in s]}."
        )
    R = full.pop()
    K = len(s)
    budget = math.floor(_fraction(rho) * K * R)
    floor = rank_floor(R, rho)
    ranks = [R] * K
    # candidates: (last kept normalized value, model index) for models above the floor.
    # Values are compared rounded to 1e-12 (they lie in [0, 1]): equal normalized values
    # are ties, broken by model order, so rescaling one model's W C cannot flip a tie
    # through the last bit of sigma / sigma_max.
    def key(i: int, rank: int) -> tuple[float, int]:
        return (round(float(s[i][rank - 1]), 12), i)

    heap = [key(i, R) for i in range(K) if R > floor]
    heapq.heapify(heap)
    total = K * R
    while total > budget and heap:
        _, i = heapq.heappop(heap)
        ranks[i] -= 1
        total -= 1
        if ranks[i] > floor:
            heapq.heappush(heap, key(i, ranks[i]))
    return tuple(ranks)


@attrs.frozen
class RankAllocation:
    """Result of :func:`spectral_rank_allocation` (small: integers only).

    Attributes:
        rho: the preserved rank ratio.
        full_ranks: layer -> ``R^l = min(d_out, d_in)``.
        ranks: layer -> task -> ``r_i^l``.
    """

    rho: float
    full_ranks: Mapping[str, int]
    ranks: Mapping[str, Mapping[str, int]]

    @property
    def gamma(self) -> float:
        return stopping_ratio(self.rho)

    @property
    def ratios(self) -> dict[str, float]:
        """Task -> ``rho_i = sum_l r_i^l / sum_l R^l`` over the layers the task is in."""
        kept: dict[str, int] = {}
        full: dict[str, int] = {}
        for layer, per_task in self.ranks.items():
            for task, r in per_task.items():
                kept[task] = kept.get(task, 0) + r
                full[task] = full.get(task, 0) + self.full_ranks[layer]
        return {task: kept[task] / full[task] for task in sorted(kept)}

    def to_data(self) -> dict[str, Any]:
        """JSON-serialisable summary (for reports)."""
        return {
            "rho": self.rho,
            "gamma": self.gamma,
            "ratios": self.ratios,
            "layers": {
                layer: {"R": self.full_ranks[layer], "ranks": dict(self.ranks[layer])}
                for layer in sorted(self.ranks)
            },
        }


def spectral_rank_allocation(
    spectra: Mapping[str, Mapping[str, Any]], rho: float = 63 / 64
) -> RankAllocation:
    """Algorithm 1 of PAVE over a whole model set.

    Args:
        spectra: layer name -> task name -> singular values of ``W_i^l C_i^l``
            (the tasks present in a layer are allocated together; a task
            missing from a layer simply does not count there).
        rho: preserved rank ratio (the PAVE ViT script uses 63/64).

    Returns:
        The per-layer ranks ``r_i^l`` and (``.ratios``) the per-model ratios ``rho_i``.
    """
    full_ranks: dict[str, int] = {}
    ranks: dict[str, dict[str, int]] = {}
    for layer in sorted(spectra):
        tasks = list(spectra[layer])  # the caller's task order breaks ties
        layer_ranks = allocate_layer([spectra[layer][t] for t in tasks], rho)
        full_ranks[layer] = len(normalized_spectrum(spectra[layer][tasks[0]]))
        ranks[layer] = dict(zip(tasks, layer_ranks))
    return RankAllocation(float(rho), full_ranks, ranks)
