"""Helpers shared by the built-in mergers (one place, no copies between modules).

- :func:`stacked_task_vectors`: the ``T`` task vectors as one ``(T, *shape)`` tensor.
- :func:`summed_task_vectors`: ``sum_t Delta_t`` accumulated in place (no stack).
- :func:`polar_in_span`: the orthogonal polar factor of concatenated singular
  vectors on their numerical span, which TSV-M and Iso-CTS use to orthogonalise them.
- :func:`route_field` / :func:`resolve_route` / :func:`stack_polar`: the ``route``
  parameter of the SVD backbones and what it selects.

The rule for non-floating tensors is :meth:`pactframe.Merger.supports`'s default
(:func:`pactframe.contracts.float_support_reason`); the non-matrix fallback and the
transposed-layout helpers are public in :mod:`pactframe.matrix`; the SVD backbones'
shared base is :class:`pactframe_plugins.mergers._svd.SVDMerger`.
"""

from __future__ import annotations

from typing import Any

import torch

from pactframe import Decomposer, LayerBundle, param
from pactframe.errors import InputError
from pactframe.linalg import gram_polar_in_span
from pactframe.linalg import polar_in_span as linalg_polar_in_span
from pactframe.validation import one_of

#: How the SVD backbones (tsv_m, iso_c, iso_cts) orthogonalise and flatten:
#: ``exact`` = full SVDs (the authors' formulas), ``gram`` = eigh of the float64
#: Gram matrix of the smaller side, ``auto`` = exact with the ``exact_svd``
#: decomposer, gram with any other (``randomized_svd``: efficient end to end).
ROUTES = ("auto", "exact", "gram")


def stacked_task_vectors(bundle: LayerBundle) -> torch.Tensor:
    """The task vectors as a ``(T, *shape)`` tensor (a copy; inputs stay untouched)."""
    return torch.stack(bundle.task_vectors)


def summed_task_vectors(bundle: LayerBundle) -> torch.Tensor:
    """``sum_t Delta_t`` as a new contiguous tensor, added in task order into one
    buffer: one tensor of memory instead of the ``T + 1`` of ``stack(...).sum(0)``.

    For ``T <= 4`` the result is bit-identical to ``torch.stack(tvs).sum(dim=0)``
    (both start from 0 and add the tasks in order; tested); from ``T = 5`` torch's
    reduction may use several accumulators, so the two can differ in the last bit.
    """
    first, *rest = bundle.task_vectors
    total = first.add(0.0).contiguous()  # 0 + Delta_1, as the reduction starts (-0 -> +0)
    for tv in rest:
        total.add_(tv)
    return total


def weighted_task_sum(bundle: LayerBundle) -> torch.Tensor:
    """``sum_t w_t Delta_t`` with the bundle's per-model weights (``models[].weight``);
    exactly :func:`summed_task_vectors` when no weights are set."""
    if bundle.task_weights is None:
        return summed_task_vectors(bundle)
    weights = bundle.weights
    total = bundle.task_vectors[0].mul(weights[0]).contiguous()
    for w, tv in zip(weights[1:], bundle.task_vectors[1:]):
        total.add_(tv, alpha=w)
    return total


def weight_total(bundle: LayerBundle) -> float:
    """``sum_t w_t`` (``T`` without weights); refuses a zero total, which no
    normalised weighted mean can divide by."""
    total = float(sum(bundle.weights))
    if abs(total) < 1e-12:
        raise InputError(
            f"Tensor {bundle.name!r}: the models' weights {list(bundle.weights)} sum to 0; a "
            "normalised weighted mean divides by that sum. Change the weights or set "
            "normalize: false."
        )
    return total


def polar_in_span(stack: torch.Tensor) -> torch.Tensor:
    """Orthogonalise concatenated singular vectors inside their span.

    ``stack`` is ``(m, K)`` (left singular vectors side by side) or ``(K, n)``
    (right singular vectors stacked as rows), made of orthonormal blocks. Returns
    the polar factor on its numerical range, ``U_r Vh_r`` for ``stack = U_r
    diag(S_r) Vh_r`` (:func:`pactframe.linalg.polar_in_span` with the unit-scale
    tolerance: singular values at most ``sqrt(eps)``, about 1.5e-8 in float64,
    mark blocks that span the same directions up to rounding). When ``stack``
    has full rank ``min(m, K)`` this is the authors' polar factor ``u @ vh``
    (the nearest matrix with orthonormal columns, or rows); otherwise their
    factor would add arbitrary null directions, and this one adds none.
    Half-precision input is computed in float32.
    """
    return linalg_polar_in_span(stack, unit_scale=True)


def stack_polar(stack: torch.Tensor, route: str) -> torch.Tensor:
    """:func:`polar_in_span` (``route="exact"``) or its Gram-route equivalent
    :func:`pactframe.linalg.gram_polar_in_span` (``route="gram"``; same rank rule,
    cheaper, docs/mergers/index.md)."""
    if route == "gram":
        return gram_polar_in_span(stack, unit_scale=True)
    return polar_in_span(stack)


def route_field() -> Any:
    """The ``route`` parameter of the SVD backbones (see :data:`ROUTES`)."""
    return param(
        "auto",
        validator=one_of(ROUTES),
        help="'exact': full SVDs for orthogonalisation/flattening (the authors' formulas); "
        "'gram': eigh of the float64 Gram matrix of the smaller side (cheaper, same rank "
        "rule for half/float32 inputs; docs/mergers/index.md); 'auto': exact with "
        "decomposer exact_svd, gram otherwise",
    )


def resolve_route(route: str, decomposer: Decomposer) -> str:
    """``"exact"`` or ``"gram"``: ``auto`` follows the decomposer (exact only for ``exact_svd``)."""
    if route != "auto":
        return route
    return "exact" if decomposer.name == "exact_svd" else "gram"
