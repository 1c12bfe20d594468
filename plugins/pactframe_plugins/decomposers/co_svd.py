"""Context-oriented SVD (CO-SVD) of CorDA, the decomposition inside PAVE."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import attrs
import torch

from pactframe import Decomposer, hookimpl, param
from pactframe.linalg import damped_covariance, regularized_covariance
from pactframe.validation import one_of, real
from pactframe_plugins.decomposers._context_svd import CovarianceWeightedSVD, Weighting


@attrs.frozen
class ContextOrientedSVD(CovarianceWeightedSVD):
    """CO-SVD: SVD of ``W C``, with the right factor mapped back through ``C^-1``.

    Yang et al., "CorDA: Context-Oriented Decomposition Adaptation of Large
    Language Models", NeurIPS 2024 (Sec. 3.2); used by PAVE (Sun et al.,
    "Purifying Task Vectors in Knowledge-Aware Subspace", eq. 5-6)::

        W C_reg = U diag(S) Vh,      W ~= U_r diag(S_r) (Vh_r C_reg^-1)

    with ``C_reg`` the damped covariance (see
    :func:`pactframe.linalg.damped_covariance`). The activated error of the
    rank-``r`` truncation is the tail energy of ``W C_reg``:
    ``||(W - W_r) C_reg||_F^2 = sum_{j>r} S_j^2``.

    Shapes, dtypes and checks as in
    :class:`~pactframe_plugins.decomposers._context_svd.CovarianceWeightedSVD`;
    ``S`` holds the singular values of ``W C_reg``.
    """

    name: ClassVar[str] = "co_svd"

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

    damping_check: str = param(
        "strict",
        validator=one_of(("strict", "released")),
        help="'strict': two-sided float64 residual, Cholesky and rounding-floor checks; "
        "'released': the PAVE code's one-sided float32 residual (docs/pave.md)",
    )

    def weighting(self, covariance: torch.Tensor) -> Weighting:
        c_reg, inv, _ = damped_covariance(
            covariance,
            damping=self.damping,
            mode=self.damping_mode,
            tolerance=self.tolerance,
            check=self.damping_check,
        )
        return (lambda w: w @ c_reg), (lambda vh: vh @ inv)

    def weigh(self, covariance: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``W -> W C_reg`` with the same ``eps`` as :meth:`weighting`; no inverse is
        formed once this process has decided ``eps`` for ``covariance``
        (:func:`pactframe.linalg.regularized_covariance`)."""
        c_reg, _ = regularized_covariance(
            covariance,
            damping=self.damping,
            mode=self.damping_mode,
            tolerance=self.tolerance,
            check=self.damping_check,
        )
        return lambda w: w @ c_reg


@hookimpl
def pactframe_register_decomposers() -> list[type[Decomposer]]:
    return [ContextOrientedSVD]
