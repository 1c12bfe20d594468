"""What the context-aware decomposers (``co_svd``, ``asvd``, ``svd_llm``) share.

All three factorize ``W`` through an input-space weighting ``M`` built from the
input covariance ``C``: SVD of ``W M``, then the right factor mapped back through
``M^-1``::

    W M = U diag(S) Vh,      W ~= U_r diag(S_r) (Vh_r M^-1)

They differ only in ``M`` (CO-SVD: the damped ``C``; ASVD: a diagonal channel
scale; SVD-LLM: the Cholesky factor of ``C``), which each supplies through
:meth:`CovarianceWeightedSVD.weighting`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import torch

from pactframe import Decomposer, Factorization
from pactframe.errors import InputError
from pactframe.linalg import working_dtype

#: ``(weigh, unweigh)``: ``W -> W M`` and ``Vh -> Vh M^-1``, both on float64 tensors.
Weighting = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def covariance_for(
    name: str, matrix: torch.Tensor, covariance: torch.Tensor | None
) -> torch.Tensor:
    """The ``(d_in, d_in)`` covariance of ``matrix`` ``(d_out, d_in)``, symmetrised, in float64.

    Raises :class:`InputError` naming the decomposer when it is missing, of the
    wrong shape, or not finite.
    """
    if covariance is None:
        raise InputError(
            f"{name} needs an input covariance (d_in x d_in) for this matrix; collect one "
            "with 'pactframe collect-covariance' or use exact_svd."
        )
    n = matrix.shape[1]
    if matrix.ndim != 2 or covariance.shape != (n, n):
        raise InputError(
            f"{name}: the covariance has shape {tuple(covariance.shape)} but the matrix "
            f"{tuple(matrix.shape)} needs ({n}, {n})."
        )
    c = covariance.to(device=matrix.device, dtype=torch.float64)
    if not bool(torch.isfinite(c).all()):
        raise InputError(f"{name}: the covariance holds NaN or inf values; collect it again.")
    return 0.5 * (c + c.transpose(0, 1))


class CovarianceWeightedSVD(Decomposer):
    """A decomposer that is an SVD of ``W M`` mapped back by ``M^-1`` (module docstring).

    Subclasses implement :meth:`weighting`; :meth:`decompose` checks the
    covariance (:func:`covariance_for`), computes in float64 and returns
    ``U (d_out, r)``, ``S (r,)`` (singular values of ``W M``) and
    ``Vh M^-1 (r, d_in)`` (not orthonormal) in the input's working dtype.
    """

    requires_covariance: ClassVar[bool] = True

    @abc.abstractmethod
    def weighting(self, covariance: torch.Tensor) -> Weighting:
        """``(weigh, unweigh)`` for a symmetric float64 covariance ``C``."""

    def weigh(self, covariance: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``W -> W M`` alone, for callers that never map back through ``M^-1``.

        ``U_r diag(S_r) Vh_r M^-1 = U_r U_r^T W`` for any invertible ``M`` (since
        ``Vh_r = diag(S_r)^-1 U_r^T W M``), so a rank-``r`` reconstruction needs
        only the left singular vectors of ``W M``; PAVE's Gram route uses that.
        The default takes the first half of :meth:`weighting`; a subclass
        overrides it when ``M`` is cheaper than ``M^-1`` (``co_svd``).
        """
        return self.weighting(covariance)[0]

    def decompose(
        self,
        matrix: torch.Tensor,
        rank: int | None = None,
        *,
        covariance: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Factorization:
        weigh, unweigh = self.weighting(covariance_for(self.name, matrix, covariance))
        U, S, Vh = torch.linalg.svd(weigh(matrix.to(torch.float64)), full_matrices=False)
        out = working_dtype(matrix.dtype)
        f = Factorization(U.to(out), S.to(out), unweigh(Vh).to(out), orthonormal=False)
        return f if rank is None else f.truncate(rank)
