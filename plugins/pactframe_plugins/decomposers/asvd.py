"""ASVD: activation-aware SVD with a diagonal input scaling."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from pactframe import Decomposer, hookimpl, param
from pactframe.errors import InputError
from pactframe.validation import one_of, real
from pactframe_plugins.decomposers._context_svd import CovarianceWeightedSVD, Weighting


@attrs.frozen
class ActivationAwareSVD(CovarianceWeightedSVD):
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

    Shapes, dtypes and checks as in
    :class:`~pactframe_plugins.decomposers._context_svd.CovarianceWeightedSVD`;
    ``S`` holds the singular values of ``W S``.
    """

    name: ClassVar[str] = "asvd"

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

    def weighting(self, covariance: torch.Tensor) -> Weighting:
        s = self.channel_scale(covariance)
        return (lambda w: w * s), (lambda vh: vh / s)


@hookimpl
def pactframe_register_decomposers() -> list[type[Decomposer]]:
    return [ActivationAwareSVD]
