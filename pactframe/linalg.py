"""Small linear-algebra helpers shared by components."""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs (LAPACK has no fp16/bf16 SVD), else ``dtype``."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def as_working(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` cast to :func:`working_dtype` (no copy when already wide enough)."""
    return matrix.to(working_dtype(matrix.dtype))


def rank_rtol(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> float:
    """Default relative rank tolerance ``max(shape) * eps(dtype)``.

    The rule of numpy's ``matrix_rank`` (and of LAPACK-based rank decisions in
    general): a singular value counts as zero when it is at most
    ``sigma_max * max(m, n) * eps``, the size of the rounding error an SVD
    makes in any singular value of an ``(m, n)`` matrix. ``dtype`` is the
    working dtype (``eps`` = 2.2e-16 in float64, 1.2e-7 in float32).
    """
    return max(shape) * torch.finfo(working_dtype(dtype)).eps


def derived_rtol(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> float:
    """Relative tolerance ``max(sqrt(eps), max(shape) * eps)`` for derived matrices.

    A matrix computed with a basis that came from ANOTHER decomposition (a
    residual ``Delta - U_c U_c^T Delta`` with ``U_c`` from the SVD of a sum, a
    stack of singular bases of different matrices) carries that basis's error,
    which is the rounding error amplified by the conditioning of the subspace
    (``eps * sigma_max / gap``), not just ``max(m, n) * eps``. Its singular values
    at or below ``sqrt(eps)`` (1.5e-8 in float64, 3.5e-4 in float32) times the
    reference scale are treated as zero: a direction that small is either such
    an artefact or too weak to be resolved apart from one.
    """
    eps = torch.finfo(working_dtype(dtype)).eps
    return max(math.sqrt(eps), rank_rtol(shape, dtype))


def unit_scale_rtol(
    sigma_max: float, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype
) -> float:
    """Relative tolerance (to ``sigma_max``) for matrices whose columns (or rows)
    have unit scale: :func:`derived_rtol` as an ABSOLUTE floor.

    Stacks of orthonormal blocks (concatenated singular bases) and projections
    of orthonormal vectors have singular values that are cosines and sines of
    principal angles, computed from different SVDs that agree only to rounding;
    a direction with singular value at most ``sqrt(eps)`` is two bases spanning
    the same space up to rounding, not a real direction. Returns
    ``max(sqrt(eps) / sigma_max, max(shape) * eps)`` (``inf`` for ``sigma_max = 0``).
    """
    eps = torch.finfo(working_dtype(dtype)).eps
    floor = math.sqrt(eps) / sigma_max if sigma_max > 0 else math.inf
    return max(floor, rank_rtol(shape, dtype))


def numerical_rank(singular_values: torch.Tensor, rtol: float, scale: float | None = None) -> int:
    """How many of the descending ``singular_values`` exceed ``rtol * scale``.

    ``scale`` defaults to the largest singular value (``singular_values[0]``);
    pass a larger reference (e.g. the norm of the matrix a residual was
    computed from) when the values come from a difference. An empty or zero
    spectrum has rank 0.
    """
    if singular_values.numel() == 0:
        return 0
    ref = float(singular_values[0]) if scale is None else float(scale)
    if not ref > 0.0:
        return 0
    return int((singular_values > ref * rtol).sum())


def truncated_svd(
    matrix: torch.Tensor, rtol: float | None = None, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-revealing thin SVD: ``(U_r, S_r, Vh_r)`` of ``matrix`` ``(m, n)``,
    shapes ``(m, r)``, ``(r,)``, ``(r, n)``, with ``r`` the numerical rank.

    A singular value is kept when ``sigma > rtol * scale``; ``rtol`` defaults to
    :func:`rank_rtol` (``max(m, n) * eps``) and ``scale`` to ``sigma_max``
    (:func:`numerical_rank`). Singular vectors of the discarded (numerically
    zero) singular values are arbitrary: LAPACK picks any basis of the null
    spaces, and a perturbation of the size of rounding changes it completely,
    so nothing downstream may depend on them. Exact SVD in the working dtype
    (float32 for half inputs); results in that dtype.
    """
    a = as_working(matrix)
    U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    tol = rank_rtol(a.shape, a.dtype) if rtol is None else rtol
    keep = numerical_rank(S, tol, scale)
    return U[:, :keep], S[:keep], Vh[:keep]


def polar_in_span(
    matrix: torch.Tensor, rtol: float | None = None, *, unit_scale: bool = False
) -> torch.Tensor:
    """Orthogonal polar factor of ``matrix`` ``(m, k)`` restricted to its numerical range.

    With ``matrix = U_r diag(S_r) Vh_r`` (:func:`truncated_svd`) returns the
    partial isometry ``U_r Vh_r`` ``(m, k)``: the unique factor ``P`` of the
    polar decomposition ``matrix = P (matrix^T matrix)^{1/2}`` whose row space
    is the row space of ``matrix`` and whose column space is its column space.
    On a matrix of full rank ``min(m, k)`` this is the usual polar factor ``U Vh``
    (the orthonormal matrix nearest to ``matrix``); on a rank-deficient one the
    usual factor would complete the basis with arbitrary null vectors, while
    this one leaves the null spaces null, so it is unique and stable under
    perturbations of the size of rounding.

    ``unit_scale=True`` is for stacks of orthonormal blocks (concatenated
    singular bases): the tolerance is :func:`unit_scale_rtol`; otherwise
    ``rtol`` (default :func:`rank_rtol`) relative to ``sigma_max``.
    """
    a = as_working(matrix)
    U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    if rtol is None:
        sigma_max = float(S[0]) if S.numel() else 0.0
        rtol = (
            unit_scale_rtol(sigma_max, a.shape, a.dtype)
            if unit_scale
            else rank_rtol(a.shape, a.dtype)
        )
    keep = numerical_rank(S, rtol)
    return U[:, :keep] @ Vh[:keep]


def orth(matrix: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Rank-revealing orthonormal basis of ``range(matrix)``, shape ``(m, rank)``.

    Keeps the left singular vectors with ``sigma > sigma_max * rtol``, where
    ``rtol`` defaults to ``max(matrix.shape) * eps(dtype)`` (as numpy's
    ``matrix_rank``; :func:`rank_rtol`). Unlike plain QR on a rank-deficient
    matrix, the result does not depend on rounding noise and spans exactly the
    numerical range. A zero or empty matrix gives an ``(m, 0)`` basis.
    """
    m = matrix.shape[0]
    if matrix.numel() == 0:
        return matrix.new_zeros((m, 0))
    U, _, _ = truncated_svd(matrix, rtol)
    return U


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
    check: str = "strict",
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

    The inverse is the Cholesky one (``torch.cholesky_inverse`` of the factor the
    positive-definiteness test computed, symmetrised), so ``C_reg^-1 C_reg`` is the
    transpose of ``C_reg C_reg^-1`` up to rounding and one product gives both
    residuals. The accepted ``eps`` is remembered per covariance (its float64
    bytes) and settings in this process (:func:`clear_damping_memo`), so the
    second pass of a two-pass merge, and weights that share an input covariance,
    pay for the search once.

    ``check="released"`` accepts ``eps`` as the released PAVE code does: only the
    one-sided residual ``||C_reg C_reg^-1 - I||_F < tolerance``, computed in
    float32, with no Cholesky and no rounding-floor test (docs/pave.md, "Damping:
    three differences"); the returned ``C_reg`` and inverse are still float64
    (``torch.linalg.inv``).

    Returns ``(C_reg, C_reg^-1, eps)`` in float64.
    """
    c_reg, eps, inverse = _damping_search(
        covariance, damping, mode, tolerance, max_doublings, check, need_inverse=True
    )
    assert inverse is not None
    return c_reg, inverse, eps


def regularized_covariance(
    covariance: torch.Tensor,
    *,
    damping: float = 0.01,
    mode: str = "relative",
    tolerance: float = 0.05,
    max_doublings: int = 60,
    check: str = "strict",
) -> tuple[torch.Tensor, float]:
    """``(C_reg, eps)`` of :func:`damped_covariance` without returning the inverse.

    Same search and acceptance tests (and the same ``eps``); when this process
    already decided ``eps`` for this covariance and these settings, no inverse is
    computed at all: ``C_reg = C + eps * scale * I``. For callers that only
    multiply by ``C_reg`` (PAVE's Gram route, whose map back needs no ``C_reg^-1``).
    """
    c_reg, eps, _ = _damping_search(
        covariance, damping, mode, tolerance, max_doublings, check, need_inverse=False
    )
    return c_reg, eps


#: ``{(fingerprint, device type, settings): eps}``: the damping decisions of this
#: process (least recently used first), at most :data:`_DAMPING_MEMO_SIZE` entries.
_DAMPING_MEMO: OrderedDict[tuple[object, ...], float] = OrderedDict()
_DAMPING_MEMO_SIZE = 4096
_DAMPING_LOCK = threading.Lock()  # components may run in threads of an embedding program


def clear_damping_memo() -> None:
    """Forget the ``eps`` decisions :func:`damped_covariance` remembered."""
    with _DAMPING_LOCK:
        _DAMPING_MEMO.clear()


def _fingerprint(matrix: torch.Tensor) -> str:
    """A digest of ``matrix``'s shape, dtype and bytes (BLAKE2b, 128 bits)."""
    data = matrix.detach().contiguous().cpu()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((tuple(data.shape), str(data.dtype))).encode())
    if data.numel():
        digest.update(data.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _damping_search(
    covariance: torch.Tensor,
    damping: float,
    mode: str,
    tolerance: float,
    max_doublings: int,
    check: str,
    *,
    need_inverse: bool,
) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """``(C_reg, eps, C_reg^-1 or None)``: :func:`damped_covariance`'s search, memoised."""
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
    if check not in ("strict", "released"):
        raise InputError(f"Damping check must be 'strict' or 'released'; got {check!r}.")
    key = (
        _fingerprint(c),
        c.device.type,
        float(damping),
        mode,
        float(tolerance),
        int(max_doublings),
        check,
    )
    with _DAMPING_LOCK:
        known = _DAMPING_MEMO.get(key)
        if known is not None:
            _DAMPING_MEMO.move_to_end(key)
    if known is not None:
        c_reg = c + (known * scale) * eye
        if not need_inverse:
            return c_reg, known, None
        if check == "released":
            return c_reg, known, torch.linalg.inv(c_reg)
        factor = torch.linalg.cholesky(c_reg)
        return c_reg, known, _symmetric(torch.cholesky_inverse(factor))
    eps = float(damping)
    for _ in range(max_doublings):
        c_reg = c + (eps * scale) * eye
        inverse: torch.Tensor | None = None
        if check == "released":
            if _released_residual(c_reg) < tolerance:
                inverse = torch.linalg.inv(c_reg)
        else:
            factor, not_pd = torch.linalg.cholesky_ex(c_reg)
            if int(not_pd) == 0:
                candidate = _symmetric(torch.cholesky_inverse(factor))
                if (
                    bool(torch.isfinite(candidate).all())
                    and _accurate_inverse(c_reg, candidate, eye, tolerance)
                ):
                    inverse = candidate
        if inverse is not None:
            with _DAMPING_LOCK:
                _DAMPING_MEMO[key] = eps
                if len(_DAMPING_MEMO) > _DAMPING_MEMO_SIZE:
                    _DAMPING_MEMO.popitem(last=False)
            return c_reg, eps, inverse
        eps *= 2.0
    raise InputError(
        f"The covariance could not be regularised to an accurate inverse after {max_doublings} "
        f"doublings of the damping (last eps {eps:g}); it is likely corrupt."
    )


def _symmetric(matrix: torch.Tensor) -> torch.Tensor:
    return 0.5 * (matrix + matrix.transpose(0, 1))


def _released_residual(matrix: torch.Tensor) -> float:
    """``||A A^-1 - I||_F`` in float32 (the released PAVE code's test; inf if singular)."""
    a = matrix.to(torch.float32)
    try:
        inv = torch.linalg.inv(a)
    except RuntimeError:
        return math.inf
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    value = float(torch.linalg.matrix_norm(a @ inv - eye))
    return value if math.isfinite(value) else math.inf


#: Gaussian probe vectors of the residual estimate in :func:`_accurate_inverse`.
_RESIDUAL_PROBES = 8


def _accurate_inverse(
    matrix: torch.Tensor, inverse: torch.Tensor, eye: torch.Tensor, tolerance: float
) -> bool:
    """Whether :func:`_inverse_residual` ``< tolerance``, mostly without its ``n^3`` product.

    The rounding floor ``n u ||A||_1 ||A^-1||_1`` is checked first (``O(n^2)``). Then
    ``||A A^-1 - I||_F^2`` is estimated from 8 Gaussian probes ``z`` (a fixed seed):
    ``mean ||(A A^-1 - I) z||^2`` is an unbiased estimate with at least 8 degrees
    of freedom, so it falls below 1e-4 of the true value with probability below
    1e-15. When the estimate is below ``(tolerance / 100)^2`` the residual is
    accepted without forming ``A A^-1``; otherwise (an ill-conditioned ``A`` near
    the tolerance, or any doubt) the exact residual decides, as before. For the
    covariances of real layers the first case is the rule: the residual is ~1e-12.
    """
    n = matrix.shape[0]
    unit_roundoff = torch.finfo(matrix.dtype).eps / 2
    norms = float(torch.linalg.matrix_norm(matrix, ord=1)) * float(
        torch.linalg.matrix_norm(inverse, ord=1)
    )
    if n * unit_roundoff * norms >= tolerance:
        return False
    probes = torch.randn(
        n, _RESIDUAL_PROBES, generator=torch.Generator().manual_seed(0), dtype=matrix.dtype
    ).to(matrix.device)
    estimate = float((matrix @ (inverse @ probes) - probes).square().sum()) / _RESIDUAL_PROBES
    if estimate < (tolerance / 100.0) ** 2:
        return True
    return _inverse_residual(matrix, inverse, eye) < tolerance


def _inverse_residual(matrix: torch.Tensor, inverse: torch.Tensor, eye: torch.Tensor) -> float:
    """``max(||A A^-1 - I||_F, ||A^-1 A - I||_F, n u ||A||_1 ||A^-1||_1)``: the
    two-sided residual, or the level below which rounding makes it meaningless.

    For a symmetric ``A`` and a symmetric ``A^-1`` (as :func:`damped_covariance`
    passes) ``A^-1 A = (A A^-1)^T``, so both residuals are the norm of one product.
    """
    product = matrix @ inverse - eye
    right = float(torch.linalg.matrix_norm(product))
    symmetric = torch.equal(matrix, matrix.transpose(0, 1)) and torch.equal(
        inverse, inverse.transpose(0, 1)
    )
    left = right if symmetric else float(torch.linalg.matrix_norm(inverse @ matrix - eye))
    unit_roundoff = torch.finfo(matrix.dtype).eps / 2
    floor = (
        matrix.shape[0]
        * unit_roundoff
        * float(torch.linalg.matrix_norm(matrix, ord=1))
        * float(torch.linalg.matrix_norm(inverse, ord=1))
    )
    return max(right, left, floor)


#: Multiple of ``size * eps(float64)`` below which an eigenvalue of a Gram
#: matrix (relative to the largest) is rounding: symmetric eigensolvers make
#: absolute errors of about ``size * eps * ||G||_2`` in every eigenvalue.
_GRAM_FLOOR_FACTOR = 8.0


def gram_rtol(shape: tuple[int, ...] | torch.Size) -> float:
    """Smallest relative singular value :func:`gram_svd` resolves: ``sqrt(8 min(shape) eps64)``.

    The eigenvalues ``lambda = sigma^2`` of the float64 Gram matrix carry absolute
    errors of about ``min(m, n) eps64 lambda_max``, so ``sigma / sigma_max`` below
    ``sqrt(min(m, n) eps64)`` (1.3e-6 for ``min(m, n) = 1024``) cannot be told
    from zero. That is far below :func:`rank_rtol` of float32 (``max(m, n) * 1.2e-7``),
    so for half and float32 inputs the Gram route makes the rank decisions of an
    exact SVD; for float64 inputs it treats directions weaker than this as zero.
    """
    size = min(shape) if len(shape) else 0
    return math.sqrt(_GRAM_FLOOR_FACTOR * max(size, 1) * torch.finfo(torch.float64).eps)


def _gram_eig(
    gram: torch.Tensor,
    shape: torch.Size,
    dtype: torch.dtype,
    unit_scale: bool,
    rtol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_r, S_r)``: the kept eigenvectors of ``gram`` and the singular values ``sqrt(lambda)``
    (descending), with the rank rule of :func:`gram_svd`."""
    lam, w = torch.linalg.eigh(gram)
    lam, w = lam.flip(0), w.flip(1)  # descending
    s = lam.clamp_min(0.0).sqrt()
    sigma_max = float(s[0]) if s.numel() else 0.0
    if rtol is None:
        rtol = unit_scale_rtol(sigma_max, shape, dtype) if unit_scale else rank_rtol(shape, dtype)
    keep = numerical_rank(s, max(rtol, gram_rtol(shape)))
    return w[:, :keep], s[:keep]


def gram_svd(
    matrix: torch.Tensor, rtol: float | None = None, *, unit_scale: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-revealing thin SVD ``(U_r, S_r, Vh_r)`` through the Gram matrix of the smaller side.

    For a tall ``A`` ``(m, n)``, ``m >= n``: ``G = A^T A = W diag(lambda) W^T``
    (``torch.linalg.eigh`` of the float64 Gram matrix), ``S = sqrt(lambda)``,
    ``Vh = W^T`` and ``U = A W diag(1/S)``; a wide ``A`` uses ``A A^T`` and
    ``Vh = diag(1/S) U^T A``. The same ``(U_r, S_r, Vh_r)`` as
    :func:`truncated_svd` up to rounding (and signs), for ``O(m n^2)`` matrix
    products and one ``n x n`` eigendecomposition instead of an ``(m, n)`` SVD
    (about 2-3x cheaper on CPU; GEMM-bound on GPUs).

    Kept directions: ``sigma > rtol * sigma_max`` with ``rtol`` as in
    :func:`polar_in_span` (:func:`rank_rtol` of the input's working dtype, or
    :func:`unit_scale_rtol` with ``unit_scale=True``), and never below
    :func:`gram_rtol`, the Gram route's resolution (the trade-off: squaring the
    condition number loses directions weaker than ``sqrt(min(m, n) eps64)`` of the
    strongest; docs/mergers/index.md). ``U``'s columns are orthonormal to about
    ``eps_work / (sigma_r / sigma_max)``. Results in the working dtype
    (float32 for half inputs); a zero or empty matrix gives rank 0.
    """
    a = as_working(matrix)
    m, n = a.shape
    tall = m >= n
    a64 = a.to(torch.float64)
    gram = a64.transpose(0, 1) @ a64 if tall else a64 @ a64.transpose(0, 1)
    w, s = _gram_eig(gram, a.shape, a.dtype, unit_scale, rtol)
    if tall:
        u = (a64 @ (w / s)).to(a.dtype)
        vh = w.transpose(0, 1).to(a.dtype)
    else:
        u = w.to(a.dtype)
        vh = ((w / s).transpose(0, 1) @ a64).to(a.dtype)
    return u, s.to(a.dtype), vh


def gram_polar_in_span(matrix: torch.Tensor, *, unit_scale: bool = False) -> torch.Tensor:
    """:func:`polar_in_span` through the Gram route (:func:`gram_svd`'s rank decision).

    ``U_r Vh_r = A W_r diag(1/S_r) W_r^T`` for a tall ``A`` (``W_r diag(1/S_r) W_r^T A``
    for a wide one): one product with ``A`` after the eigendecomposition.
    """
    a = as_working(matrix)
    m, n = a.shape
    tall = m >= n
    a64 = a.to(torch.float64)
    gram = a64.transpose(0, 1) @ a64 if tall else a64 @ a64.transpose(0, 1)
    w, s = _gram_eig(gram, a.shape, a.dtype, unit_scale)
    inv = (w / s) @ w.transpose(0, 1)
    out = a64 @ inv if tall else inv @ a64
    return out.to(a.dtype)
