"""Context-oriented SVD (CO-SVD) of CorDA, the decomposition inside PAVE."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from pactframe import Decomposer, Factorization, hookimpl, param
from pactframe.linalg import damped_covariance, working_dtype
from pactframe.validation import one_of, real
from pactframe_plugins.decomposers._context_checks import covariance_for


@attrs.frozen
class ContextOrientedSVD(Decomposer):
    """CO-SVD: SVD of ``W C``, with the right factor mapped back through ``C^-1``.

    Yang et al., "CorDA: Context-Oriented Decomposition Adaptation of Large
    Language Models", NeurIPS 2024 (Sec. 3.2); used by PAVE (Sun et al.,
    "Purifying Task Vectors in Knowledge-Aware Subspace", eq. 5-6)::

        W C_reg = U diag(S) Vh,      W ~= U_r diag(S_r) (Vh_r C_reg^-1)

    with ``C_reg`` the damped covariance (see
    :func:`pactframe.linalg.damped_covariance`). The activated error of the
    rank-``r`` truncation is the tail energy of ``W C_reg``:
    ``||(W - W_r) C_reg||_F^2 = sum_{j>r} S_j^2``.

    Shapes: ``W (d_out, d_in)``, ``covariance (d_in, d_in)``; returns
    ``U (d_out, r)``, ``S (r,)`` (singular values of ``W C_reg``),
    ``Vh (r, d_in)`` (not orthonormal: ``orthonormal=False``). Computed in
    float64, returned in the input's working dtype (float32 for half input).
    """

    name: ClassVar[str] = "co_svd"
    requires_covariance: ClassVar[bool] = True

    damping: float = param(
        0.01,
        validator=real(0.0, closed="neither"),
        help="initial ridge eps (doubled until C inverts)",
    )
    damping_mode: str = param(
        "relative",
        validator=one_of(("relative", "absolute")),
        help="'relative': eps*mean(diag C)*I (CorDA); 'absolute': eps*I (PAVE code: damping=0.1)",
    )
    tolerance: float = param(
        0.05,
        validator=real(0.0, closed="neither"),
        help="stop when ||C_reg C_reg^-1 - I||_F < this",
    )

    def decompose(
        self,
        matrix: torch.Tensor,
        rank: int | None = None,
        *,
        covariance: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Factorization:
        cov = covariance_for(self.name, matrix, covariance)
        c_reg, inv, _ = damped_covariance(
            cov, damping=self.damping, mode=self.damping_mode, tolerance=self.tolerance
        )
        w = matrix.to(torch.float64)
        U, S, Vh = torch.linalg.svd(w @ c_reg, full_matrices=False)
        out = working_dtype(matrix.dtype)
        f = Factorization(U.to(out), S.to(out), (Vh @ inv).to(out), orthonormal=False)
        return f if rank is None else f.truncate(rank)


@hookimpl
def pactframe_register_decomposers() -> list[type[Decomposer]]:
    return [ContextOrientedSVD]
