"""Input checks shared by the context-aware decomposers (``asvd``, ``svd_llm``)."""

from __future__ import annotations

import torch

from pactframe.errors import InputError


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
