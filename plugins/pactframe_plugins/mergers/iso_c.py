"""Iso-C: isotropic merging in the common subspace (Marczak et al., ICML 2025)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from pactframe import LayerBundle, MergedTensor, Merger, Record, hookimpl
from pactframe.linalg import derived_rtol, gram_svd, truncated_svd
from pactframe.types import LowRank
from pactframe_plugins.mergers._common import stacked_task_vectors
from pactframe_plugins.mergers._svd import SVDMerger


def flat_spectrum(
    matrix: torch.Tensor, rtol: float | None = None, *, route: str = "exact"
) -> torch.Tensor:
    """``U_r (mean(S_r) I) Vh_r`` for the rank-revealing SVD ``matrix = U_r diag(S_r) Vh_r``
    (:func:`~pactframe.linalg.truncated_svd`): the same singular vectors, every
    NON-ZERO singular value replaced by their mean, i.e. ``(||M||_* / rank(M))``
    times the polar factor of ``M`` on its range. The null spaces stay null.

    ``rank(M)`` is the numerical rank: singular values ``sigma <= sigma_max * rtol``
    count as zero, ``rtol`` defaulting to ``max(m, n) * eps`` of the working dtype
    (:func:`~pactframe.linalg.rank_rtol`). For a matrix of full rank ``min(m, n)``
    this is exactly the authors' ``U (mean(S) I) Vh``. A zero matrix gives zero.
    Shape ``(m, n)`` in and out; exact SVD in the working dtype (float32 for half
    inputs), returned in ``matrix``'s dtype.

    ``route="gram"`` takes ``U_r, S_r, Vh_r`` from the float64 Gram matrix of
    the smaller side (:func:`pactframe.linalg.gram_svd`): the same rank rule
    for half and float32 inputs, about 2-3x cheaper on CPU
    (``docs/mergers/iso_c.md``).
    """
    U, S, Vh = gram_svd(matrix, rtol) if route == "gram" else truncated_svd(matrix, rtol)
    if S.numel() == 0:
        return torch.zeros_like(matrix)
    return (S.mean() * (U @ Vh)).to(matrix.dtype)


def flat_spectrum_low_rank(parts: list[LowRank], dtype: torch.dtype) -> torch.Tensor:
    """:func:`flat_spectrum` of ``M = sum_t B_t A_t`` from the factors: ``M`` is the
    factored ``[B_1 ... B_T] [A_1; ...; A_T]``, whose rank-revealing SVD (QR + small
    SVD, :meth:`LowRank.truncated_svd`, the same rank rule as the dense path) lists
    the ``rank(M) <= sum_t r_t`` non-zero values; the mean is over those, as in
    :func:`flat_spectrum`, so the result equals the dense one whatever ``rank(M)``."""
    joint = LowRank(
        torch.cat([p.B for p in parts], dim=1), torch.cat([p.A for p in parts], dim=0)
    )
    f = joint.truncated_svd(derived_rtol(joint.shape, joint.dtype))  # IsoC.merge's rule
    if f.S.numel() == 0:
        return torch.zeros(joint.shape, dtype=dtype, device=joint.device)
    return (f.S.mean() * (f.U @ f.Vh)).to(dtype)


@attrs.frozen
class IsoC(SVDMerger):
    """Iso-C: ``delta = alpha * U (mean(sigma) I) Vh`` with ``U diag(sigma) Vh = sum_t Delta_t``.

    Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
    Task-Specific Subspaces", ICML 2025 (arXiv 2502.04959), Sec. 4, Iso-C: the spectrum of the
    summed task matrix ``M = sum_t Delta_t`` is flattened to its mean, so every
    direction of the common subspace gets the same weight. Equivalently
    ``(||M||_* / r) U Vh`` with ``r = min(m, n)`` for a full-rank sum (``rank(M)``
    in general, below): the nuclear norm of ``M`` is preserved. Authors' code
    ``danielm1405/iso-merging`` ``src/utils/iso.py``
    (same in FusionBench ``isotropic_merging/iso_utils.py::iso_c``).

    Rank-deficient sums: only the numerical range of ``M`` is flattened
    (:func:`flat_spectrum`, tolerance ``sigma > sigma_max max(sqrt(eps), max(m, n) eps)``,
    :func:`~pactframe.linalg.derived_rtol`: a PACT-filtered sum carries projection
    rounding above ``max(m, n) eps`` in its null directions), and the
    mean is over the non-zero singular values, so the nuclear norm of ``M`` is
    preserved and the merged delta's row and column spaces are those of ``M``.
    The authors' code gives ``mean(S)`` also to the null directions, whose
    singular vectors are arbitrary (LAPACK-dependent); after PACT with ``T >= 3``
    tasks the sum is rank-deficient (its right null space is the protected
    pre-trained core), and that fill put a large share of the merge into the
    core and made the result change by O(1) under 1e-12 perturbations
    (``docs/mergers/iso_c.md``). On full-rank sums nothing changes.

    Scaling convention: SUM (the SVD is of the sum of the task vectors);
    ``scaling`` is the paper's ``alpha`` (grid 0.1..3.0 on validation; FusionBench
    ``scaling_factor`` default 1.0, our default too).

    Shapes: a 2-D weight ``(m, n)`` with ``min(m, n) >= 2``; the exact SVD costs
    ``O(m n min(m, n))``. Tensors that are not matrices (biases, norms, 1-D/0-D)
    go to ``fallback`` (default: the mean of the task vectors) and the result is
    multiplied by ``scaling``, as the authors do (``theta_0 + alpha * mean``).
    Name-based exclusions (``text_projection``, embeddings) are the pipeline's rules.
    Iso-C is not the identity for ``T = 1`` unless the spectrum is already flat.

    When every task vector is factored (LoRA adapters, docs/lora.md) the sum stays
    factored (:func:`flat_spectrum_low_rank`) and the result equals the dense one.

    ``route`` (``docs/mergers/iso_c.md``): ``exact`` flattens through an exact SVD
    (the authors'), ``gram`` through the eigendecomposition of the float64 Gram
    matrix of the smaller side; ``auto`` (default) is exact when ``decomposer``
    is ``exact_svd`` and gram otherwise. Iso-C needs the whole spectrum, so
    ``decomposer`` only selects the route (a PACT preset passes its decomposer
    here: ``pact_iso_c`` with ``randomized_svd`` is efficient end to end).
    """

    name: ClassVar[str] = "iso_c"

    def merge_matrix(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        factored = bundle.factored_task_vectors
        if all(f is not None for f in factored):  # LoRA task vectors: stay factored
            delta = self.scaling * flat_spectrum_low_rank(
                [f for f in factored if f is not None], bundle.base.dtype
            )
        else:
            summed = stacked_task_vectors(bundle).sum(dim=0)
            rtol = derived_rtol(summed.shape, summed.dtype)
            delta = self.scaling * flat_spectrum(summed, rtol, route=self.resolved_route)
        return MergedTensor(delta, records=(Record(self.name, {"rule": "iso_c"}),))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [IsoC]
