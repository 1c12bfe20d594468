"""Randomized SVD (Halko, Martinsson & Tropp 2011)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from pactframe import Decomposer, Factorization, hookimpl, param
from pactframe.linalg import as_working
from pactframe.validation import integer


@attrs.frozen
class RandomizedSVD(Decomposer):
    """Randomized truncated SVD with oversampling and subspace iteration.

    Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM Review
    53(2), 2011: Algorithm 4.4 (randomized subspace iteration, re-orthonormalised
    by QR after every product with ``A`` or ``A^T``) followed by Algorithm 5.1
    (direct SVD of the small ``B = Q^T A``).

    With target rank ``k`` and sketch size ``l = k + oversampling``:
    ``Y = A Omega`` (``Omega`` an ``(n, l)`` Gaussian drawn from a seeded CPU
    ``torch.Generator``), ``Q = qr(Y)``; ``power_iterations`` times
    ``Q = qr(A qr(A^T Q))``; ``B = Q^T A``; ``B = U_B S Vh``; ``U = Q U_B``;
    truncate to ``k``. Expected error (HMT Thm 10.5, ``p >= 2``, no power
    iterations): ``E ||A - Q Q^T A||_F <= (1 + k/(p-1))^{1/2} (sum_{j>k} sigma_j^2)^{1/2}``.

    Unlike ``torch.svd_lowrank`` this oversamples, takes an explicit generator
    (never the global RNG) and returns ``Vh`` like :class:`ExactSVD`.
    Shapes: ``A (m, n)`` -> ``U (m, k)``, ``S (k,)``, ``Vh (k, n)``.
    Cost ``O(m n l (2 q + 2))``. ``rank=None`` falls back to the full rank, for
    which the sketch spans everything and the result is exact.
    """

    name: ClassVar[str] = "randomized_svd"
    exact_on_factors: ClassVar[bool] = True

    oversampling: int = param(10, validator=integer(0), help="extra sketch columns p")
    power_iterations: int = param(
        2, validator=integer(0), help="subspace iterations q (each re-orthonormalised)"
    )
    seed: int = param(0, validator=integer(0), help="seed used when the caller passes no generator")

    def decompose(
        self,
        matrix: torch.Tensor,
        rank: int | None = None,
        *,
        covariance: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Factorization:
        a = as_working(matrix)
        m, n = a.shape
        full = min(m, n)
        k = full if rank is None else max(0, min(int(rank), full))
        sketch = min(k + self.oversampling, full)
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
        omega = torch.randn(n, sketch, generator=generator, dtype=a.dtype).to(a.device)
        q, _ = torch.linalg.qr(a @ omega)
        for _ in range(self.power_iterations):
            z, _ = torch.linalg.qr(a.transpose(0, 1) @ q)
            q, _ = torch.linalg.qr(a @ z)
        b = q.transpose(0, 1) @ a
        ub, s, vh = torch.linalg.svd(b, full_matrices=False)
        return Factorization(q @ ub, s, vh).truncate(k)


@hookimpl
def pactframe_register_decomposers() -> list[type[Decomposer]]:
    return [RandomizedSVD]
