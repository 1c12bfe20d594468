"""SVD-LLM: truncation-aware whitening by the Cholesky factor of the input covariance."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from pactframe import Decomposer, hookimpl, param
from pactframe.errors import InputError
from pactframe.validation import real
from pactframe_plugins.decomposers._context_svd import CovarianceWeightedSVD, Weighting

#: Ridge (relative to mean(diag C)) first tried when C is not numerically positive definite.
_FIRST_JITTER = 1e-10
_MAX_DOUBLINGS = 80


def whitening_factor(covariance: torch.Tensor, damping: float = 0.0) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor ``L`` of ``C + eps mean(diag C) I`` (float64) and the ``eps`` used.

    ``eps`` is ``damping``; if that matrix is not numerically positive
    definite, ``eps`` grows from ``max(damping, 1e-10)`` by doubling until the
    factorization succeeds (SVD-LLM shifts by the smallest eigenvalue instead;
    a ridge relative to the diagonal keeps the result scale-free).
    """
    n = covariance.shape[0]
    scale = float(torch.diagonal(covariance).mean())
    if scale <= 0.0:
        raise InputError(
            "svd_llm: the covariance has a zero or negative mean diagonal: the layer saw no "
            "(or only zero) inputs. Collect it with real task samples."
        )
    eye = torch.eye(n, dtype=covariance.dtype, device=covariance.device)
    eps = float(damping)
    for _ in range(_MAX_DOUBLINGS):
        L, info = torch.linalg.cholesky_ex(covariance + (eps * scale) * eye)
        if int(info) == 0 and bool(torch.isfinite(L).all()):
            return L, eps
        eps = max(2.0 * eps, _FIRST_JITTER)
    raise InputError(
        f"svd_llm: the covariance could not be made positive definite (last ridge {eps:g} x "
        "mean(diag C)); it is likely corrupt."
    )


@attrs.frozen
class WhitenedSVD(CovarianceWeightedSVD):
    """SVD-LLM: SVD of ``W L`` with ``C = L L^T`` (Cholesky), mapped back by ``L^-1``.

    Wang et al., "SVD-LLM: Truncation-aware Singular Value Decomposition for
    Large Language Model Compression", arXiv 2403.07378 (2024), Sec. 3.1
    (code ``AIoT-MLSys-Lab/SVD-LLM``, ``SVDLLM.py::whitening``)::

        C = X^T X / N = L L^T,   W L = U diag(S) Vh,   W_r = U_r diag(S_r) (Vh_r L^-1)

    Because ``||(W - W') X^T||_F^2 = N ||(W - W') L||_F^2`` for every ``W'``,
    ``W_r`` is the optimal rank-``r`` approximation of ``W`` in activation
    error (Eckart-Young in the whitened space), and that error is
    ``N sum_{j>r} S_j^2``. CO-SVD (``W C``) weights by ``C`` instead of
    ``C^(1/2)`` and does not reach this optimum.

    ``damping`` adds ``damping * mean(diag C) * I`` before the Cholesky
    factorization (0 by default: the exact ``C``); a covariance that is not
    numerically positive definite gets the smallest ridge, from ``1e-10``
    upwards, that makes it so (see :func:`whitening_factor`).

    Shapes, dtypes and checks as in
    :class:`~pactframe_plugins.decomposers._context_svd.CovarianceWeightedSVD`;
    ``S`` holds the singular values of ``W L``.
    """

    name: ClassVar[str] = "svd_llm"

    damping: float = param(
        0.0,
        validator=real(0.0, closed="left"),
        help="ridge eps*mean(diag C)*I added before Cholesky (0: exact C; grown only on failure)",
    )

    def weighting(self, covariance: torch.Tensor) -> Weighting:
        L, _ = whitening_factor(covariance, self.damping)
        # Vh L^-1 by a triangular solve, never an explicit inverse
        return (lambda w: w @ L), (
            lambda vh: torch.linalg.solve_triangular(L, vh, upper=False, left=False)
        )


@hookimpl
def pactframe_register_decomposers() -> list[type[Decomposer]]:
    return [WhitenedSVD]
