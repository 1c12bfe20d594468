"""Exact (LAPACK / cuSOLVER) singular value decomposition."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from pactframe import Decomposer, Factorization, hookimpl
from pactframe.linalg import as_working


@attrs.frozen
class ExactSVD(Decomposer):
    """Thin SVD ``A = U diag(S) Vh`` by ``torch.linalg.svd``, truncated to ``rank``.

    Eckart & Young (1936): the truncation to the top ``r`` components is the best
    rank-``r`` approximation of ``A`` in Frobenius and spectral norm.

    Shapes: ``A`` is ``(m, n)``; returns ``U (m, r)``, ``S (r,)``, ``Vh (r, n)``
    with ``r = min(rank, m, n)``. Half-precision input is computed in float32.
    Cost ``O(m n min(m, n))`` whatever ``rank`` is.
    """

    name: ClassVar[str] = "exact_svd"
    exact_on_factors: ClassVar[bool] = True

    def decompose(
        self,
        matrix: torch.Tensor,
        rank: int | None = None,
        *,
        covariance: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Factorization:
        U, S, Vh = torch.linalg.svd(as_working(matrix), full_matrices=False)
        f = Factorization(U, S, Vh)
        return f if rank is None else f.truncate(rank)


@hookimpl
def pactframe_register_decomposers() -> list[type[Decomposer]]:
    return [ExactSVD]
