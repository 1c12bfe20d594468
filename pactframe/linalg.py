"""Small linear-algebra helpers shared by components."""

from __future__ import annotations

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs (LAPACK has no fp16/bf16 SVD), else ``dtype``."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def as_working(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` cast to :func:`working_dtype` (no copy when already wide enough)."""
    return matrix.to(working_dtype(matrix.dtype))


def orth(matrix: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Rank-revealing orthonormal basis of ``range(matrix)``, shape ``(m, rank)``.

    Keeps the left singular vectors with ``sigma > sigma_max * rtol``, where
    ``rtol`` defaults to ``max(matrix.shape) * eps(dtype)`` (as numpy's
    ``matrix_rank``). Unlike plain QR on a rank-deficient matrix, the result
    does not depend on rounding noise and spans exactly the numerical range.
    A zero or empty matrix gives an ``(m, 0)`` basis.
    """
    m = matrix.shape[0]
    if matrix.numel() == 0:
        return matrix.new_zeros((m, 0))
    a = as_working(matrix)
    U, S, _ = torch.linalg.svd(a, full_matrices=False)
    if S.numel() == 0 or float(S[0]) == 0.0:
        return a.new_zeros((m, 0))
    tol = (max(a.shape) * torch.finfo(a.dtype).eps) if rtol is None else rtol
    keep = int((S > S[0] * tol).sum())
    return U[:, :keep]


def projector_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spectral norm of ``P_a - P_b`` for orthonormal bases ``a``, ``b`` (columns)."""
    pa = a @ a.transpose(0, 1)
    pb = b @ b.transpose(0, 1)
    return float(torch.linalg.matrix_norm(pa - pb, ord=2))


def damped_covariance(
    covariance: torch.Tensor,
    *,
    damping: float = 0.01,
    mode: str = "relative",
    tolerance: float = 0.05,
    max_doublings: int = 60,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Regularise an input covariance until it inverts accurately.

    CorDA (Yang et al., NeurIPS 2024, ``cordalib/decomposition.py``) and PAVE
    (``ViT/src/task_vectors.py``) both add a ridge and double it until
    ``||C_reg C_reg^-1 - I||_F < tolerance``:

    - ``mode="relative"`` (CorDA, our default): ``C_reg = C + eps * mean(diag C) * I``;
    - ``mode="absolute"`` (PAVE's code, start ``eps = 0.1``): ``C_reg = C + eps * I``.

    ``eps`` starts at ``damping`` and doubles, so it always lies in
    ``{damping * 2^j}``. Computed in float64 (symmetrised first).

    Returns ``(C_reg, C_reg^-1, eps)`` in float64.
    """
    from pactframe.errors import InputError

    c = covariance.to(torch.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise InputError(f"A covariance must be square (d_in, d_in); got {tuple(c.shape)}.")
    if not bool(torch.isfinite(c).all()):
        raise InputError("The covariance holds NaN or inf values; collect it again.")
    c = 0.5 * (c + c.transpose(0, 1))
    n = c.shape[0]
    eye = torch.eye(n, dtype=torch.float64, device=c.device)
    if mode == "relative":
        scale = float(torch.diagonal(c).mean())
        if scale <= 0.0:
            raise InputError(
                "The covariance has a zero or negative mean diagonal, so relative damping "
                "cannot regularise it: the layer saw no (or only zero) inputs. Collect it "
                "with real task samples, or use mode='absolute'."
            )
    elif mode == "absolute":
        scale = 1.0
    else:
        raise InputError(f"Damping mode must be 'relative' or 'absolute'; got {mode!r}.")
    eps = float(damping)
    for _ in range(max_doublings):
        c_reg = c + (eps * scale) * eye
        try:
            inv = torch.linalg.inv(c_reg)
        except RuntimeError:  # singular to working precision
            eps *= 2.0
            continue
        if float(torch.linalg.matrix_norm(c_reg @ inv - eye)) < tolerance:
            return c_reg, inv, eps
        eps *= 2.0
    raise InputError(
        f"The covariance could not be regularised to an accurate inverse after {max_doublings} "
        f"doublings of the damping (last eps {eps:g}); it is likely corrupt."
    )
