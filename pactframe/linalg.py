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
    """Spectral norm of ``P_a - P_b`` for orthonormal bases ``a`` ``(n, k_a)``, ``b`` ``(n, k_b)``.

    Uses the identity ``||P_a - P_b||_2 = max(||(I - P_a) b||_2, ||(I - P_b) a||_2)``
    for orthogonal projectors, so it costs ``O(n k^2)`` and never forms an
    ``(n, n)`` matrix; for equal dimensions it is the sine of the largest
    principal angle, accurate also for tiny angles. Subspaces of different
    dimensions are at distance 1.
    """
    a, b = as_working(a), as_working(b)

    def residual_norm(basis: torch.Tensor, other: torch.Tensor) -> float:
        if other.shape[1] == 0:
            return 0.0
        residual = other - basis @ (basis.transpose(0, 1) @ other)
        return float(torch.linalg.matrix_norm(residual, ord=2))

    return max(residual_norm(a, b), residual_norm(b, a))


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
    ``||C_reg C_reg^-1 - I||_F < tolerance``. We accept an ``eps`` only when, in
    addition, ``C_reg`` is positive definite (its Cholesky factorization
    succeeds), the residual is below ``tolerance`` on both sides
    (``C_reg C_reg^-1`` and ``C_reg^-1 C_reg``), and the residual is meaningful:
    its rounding floor ``n u ||C_reg||_1 ||C_reg^-1||_1`` (``u`` the float64 unit
    roundoff) is below ``tolerance`` too. Without these a numerically singular
    ``C_reg`` (a ridge below float64 resolution, e.g. ``damping=1e-20``) can pass
    the one-sided test by chance and come back indefinite with a meaningless
    inverse. For ordinary covariances and damping they change nothing.

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
        _, not_pd = torch.linalg.cholesky_ex(c_reg)
        if int(not_pd) == 0:
            try:
                inv = torch.linalg.inv(c_reg)
            except RuntimeError:  # singular to working precision
                inv = None
            if inv is not None and _inverse_residual(c_reg, inv, eye) < tolerance:
                return c_reg, inv, eps
        eps *= 2.0
    raise InputError(
        f"The covariance could not be regularised to an accurate inverse after {max_doublings} "
        f"doublings of the damping (last eps {eps:g}); it is likely corrupt."
    )


def _inverse_residual(matrix: torch.Tensor, inverse: torch.Tensor, eye: torch.Tensor) -> float:
    """``max(||A A^-1 - I||_F, ||A^-1 A - I||_F, n u ||A||_1 ||A^-1||_1)``: the
    two-sided residual, or the level below which rounding makes it meaningless."""
    right = float(torch.linalg.matrix_norm(matrix @ inverse - eye))
    left = float(torch.linalg.matrix_norm(inverse @ matrix - eye))
    unit_roundoff = torch.finfo(matrix.dtype).eps / 2
    floor = (
        matrix.shape[0]
        * unit_roundoff
        * float(torch.linalg.matrix_norm(matrix, ord=1))
        * float(torch.linalg.matrix_norm(inverse, ord=1))
    )
    return max(right, left, floor)
