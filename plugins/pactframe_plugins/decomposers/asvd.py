"""ASVD: activation-aware SVD with a diagonal input scaling."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from pactframe import Decomposer, Factorization, hookimpl, param
from pactframe.errors import InputError
from pactframe.linalg import working_dtype
from pactframe.validation import one_of, real
from pactframe_plugins.decomposers._context_checks import covariance_for


@attrs.frozen
class ActivationAwareSVD(Decomposer):
    """ASVD: SVD of ``W S`` with ``S`` a diagonal activation scale, mapped back by ``S^-1``.

    Yuan et al., "ASVD: Activation-aware Singular Value Decomposition for
    Compressing Large Language Models", arXiv 2312.05821 (2023), Sec. 3.2::

        S = diag(m_1^alpha, ..., m_n^alpha),   W S = U diag(Sigma) Vh,
        W ~= U_r diag(Sigma_r) (Vh_r S^-1)

    ASVD takes ``m_i = mean_tokens |x_i|``. Only the covariance ``C = X^T X / N``
    is available here, so ``scaling`` says what stands in for it:

    - ``"rms"`` (default): ``m_i = sqrt(C_ii)``, the RMS of input channel ``i``.
      For zero-mean Gaussian channels ``mean |x_i| = sqrt(2/pi) RMS_i``; a common
      factor cancels in ``SVD_r(W S) S^-1``, so then this is exactly ASVD.
    - ``"abs_row_mean"``: ``m_i = mean_j |C_ij|``, the scaling of the PAVE authors'
      own ASVD baseline (their GLUE code).

    ``S`` gets ``+ 1e-6 * max(S)`` (ASVD adds ``1e-6``; relative here so the
    result does not depend on the activation scale) so dead channels stay
    invertible. ``alpha = 0.5`` is ASVD's default.

    Shapes: ``W (d_out, d_in)``, ``covariance (d_in, d_in)``; returns
    ``U (d_out, r)``, ``S (r,)`` (singular values of ``W S``), ``Vh (r, d_in)``
    (not orthonormal). Computed in float64, returned in the working dtype.
    """

    name: ClassVar[str] = "asvd"
    requires_covariance: ClassVar[bool] = True

    alpha: float = param(
        0.5, validator=real(0.0, closed="left"), help="exponent of the activation scale (ASVD: 0.5)"
    )
    scaling: str = param(
        "rms",
        validator=one_of(("rms", "abs_row_mean")),
        help="'rms': sqrt(diag C); 'abs_row_mean': mean_j |C_ij| (PAVE code's ASVD baseline)",
    )

    def channel_scale(self, covariance: torch.Tensor) -> torch.Tensor:
        """The diagonal of ``S`` ``(d_in,)`` from a float64 covariance."""
        if self.scaling == "rms":
            m = torch.diagonal(covariance).clamp(min=0.0).sqrt()
        else:
            m = covariance.abs().mean(dim=1)
        s = m.pow(self.alpha)
        top = float(s.max())
        if top <= 0.0:
            raise InputError(
                "asvd: every input channel has zero activation scale (the covariance is zero); "
                "the layer saw no inputs. Collect the covariance with real task samples."
            )
        return s + 1e-6 * top

    def decompose(
        self,
        matrix: torch.Tensor,
        rank: int | None = None,
        *,
        covariance: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Factorization:
        c = covariance_for(self.name, matrix, covariance)
        s = self.channel_scale(c)
        U, S, Vh = torch.linalg.svd(matrix.to(torch.float64) * s, full_matrices=False)
        out = working_dtype(matrix.dtype)
        f = Factorization(U.to(out), S.to(out), (Vh / s).to(out), orthonormal=False)
        return f if rank is None else f.truncate(rank)


@hookimpl
def pactframe_register_decomposers() -> list[type[Decomposer]]:
    return [ActivationAwareSVD]
