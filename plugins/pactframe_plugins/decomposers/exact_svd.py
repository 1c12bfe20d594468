"""Exact (LAPACK / cuSOLVER) singular value decomposition."""

from __future__ import annotations

from collections.abc import Sequence
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

    def decompose_many(
        self,
        matrices: Sequence[torch.Tensor],
        rank: int | None = None,
        *,
        generators: Sequence[torch.Generator | None] | None = None,
    ) -> list[Factorization]:
        """One batched ``torch.linalg.svd`` of the stacked matrices on an accelerator
        when their shapes, dtypes and devices match (:func:`batches`); else one call
        each."""
        if not batches(matrices):
            return super().decompose_many(matrices, rank, generators=generators)
        return self._batched(matrices, rank)

    def _batched(self, matrices: Sequence[torch.Tensor], rank: int | None) -> list[Factorization]:
        U, S, Vh = torch.linalg.svd(
            torch.stack([as_working(m) for m in matrices]), full_matrices=False
        )
        out = [Factorization(U[i], S[i], Vh[i]) for i in range(len(matrices))]
        return out if rank is None else [f.truncate(rank) for f in out]


def batches(matrices: Sequence[torch.Tensor]) -> bool:
    """Whether the built-in decomposers factorize ``matrices`` in one batched call: more
    than one matrix, all of one shape, dtype and device, and that device not the CPU.

    On a GPU one ``(T, m, n)`` call of each kernel replaces ``T`` launches of
    kernels too small to fill the device; on a CPU the flops are the same and the
    stacked copy would only add ``T`` matrices to the peak memory, so the CPU loops.
    """
    if len(matrices) < 2 or matrices[0].device.type == "cpu":
        return False
    first = matrices[0]
    return all(
        m.shape == first.shape and m.dtype == first.dtype and m.device == first.device
        for m in matrices
    )


@hookimpl
def pactframe_register_decomposers() -> list[type[Decomposer]]:
    return [ExactSVD]
