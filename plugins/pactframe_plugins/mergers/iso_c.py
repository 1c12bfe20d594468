"""Iso-C: isotropic merging in the common subspace (Marczak et al., ICML 2025)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from pactframe import LayerBundle, MergedTensor, Merger, Record, hookimpl, param
from pactframe.linalg import as_working
from pactframe.types import LowRank
from pactframe.validation import real
from pactframe_plugins.mergers._common import (
    fallback_field,
    float_support_reason,
    merge_with_fallback,
    require_float,
    stacked_task_vectors,
)
from pactframe_plugins.mergers.average import WeightAveraging


def flat_spectrum(matrix: torch.Tensor) -> torch.Tensor:
    """``U (mean(S) I) Vh`` for ``matrix = U diag(S) Vh``: same singular vectors,
    every singular value replaced by their mean, i.e. ``(||M||_* / r) polar(M)``.

    Shape ``(m, n)`` in and out, ``r = min(m, n)``; exact SVD in the working
    dtype (float32 for half inputs), returned in ``matrix``'s dtype.
    """
    U, S, Vh = torch.linalg.svd(as_working(matrix), full_matrices=False)
    return (S.mean() * (U @ Vh)).to(matrix.dtype)


def flat_spectrum_low_rank(parts: list[LowRank], dtype: torch.dtype) -> torch.Tensor:
    """:func:`flat_spectrum` of ``M = sum_t B_t A_t`` from the factors: ``M`` is the
    factored ``[B_1 ... B_T] [A_1; ...; A_T]``, whose exact SVD (QR + small SVD,
    :meth:`LowRank.svd`) lists its ``rank(M) <= sum_t r_t`` nonzero values; the mean
    is over all ``min(m, n)`` values (the missing ones are zero), and ``U Vh`` spans
    the range of ``M`` only. Equal to the dense result when ``M`` has full rank;
    otherwise the dense ``U Vh`` also holds arbitrary zero-value directions."""
    joint = LowRank(
        torch.cat([p.B for p in parts], dim=1), torch.cat([p.A for p in parts], dim=0)
    )
    f = joint.svd()
    mean = f.S.sum() / min(joint.shape)
    return (mean * (f.U @ f.Vh)).to(dtype)


@attrs.frozen
class IsoC(Merger):
    """Iso-C: ``delta = alpha * U (mean(sigma) I) Vh`` with ``U diag(sigma) Vh = sum_t Delta_t``.

    Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
    Task-Specific Subspaces", ICML 2025 (arXiv 2502.04959), Sec. 4, Iso-C: the spectrum of the
    summed task matrix ``M = sum_t Delta_t`` is flattened to its mean, so every
    direction of the common subspace gets the same weight. Equivalently
    ``(||M||_* / r) U Vh`` with ``r = min(m, n)``: the nuclear norm of ``M`` is
    preserved. Authors' code ``danielm1405/iso-merging`` ``src/utils/iso.py``
    (same in FusionBench ``isotropic_merging/iso_utils.py::iso_c``).

    Scaling convention: SUM (the SVD is of the sum of the task vectors);
    ``scaling`` is the paper's ``alpha`` (grid 0.1..3.0 on validation; FusionBench
    ``scaling_factor`` default 1.0, our default too).

    Shapes: a 2-D weight ``(m, n)`` with ``min(m, n) >= 2``; the exact SVD costs
    ``O(m n min(m, n))``. Tensors that are not matrices (biases, norms, 1-D/0-D)
    go to ``fallback`` (default: the mean of the task vectors) and the result is
    multiplied by ``scaling``, as the authors do (``theta_0 + alpha * mean``).
    Name-based exclusions (``text_projection``, embeddings) are the pipeline's rules.
    Iso-C is not the identity for ``T = 1`` unless the spectrum is already flat.
    """

    name: ClassVar[str] = "iso_c"

    scaling: float = param(
        1.0, validator=real(), help="alpha multiplying the flattened SUM of the task vectors"
    )
    fallback: Merger = fallback_field(WeightAveraging())

    def supports(self, bundle: LayerBundle) -> str | None:
        return float_support_reason(bundle)

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        require_float(bundle, self.name)
        if not bundle.is_matrix:
            return merge_with_fallback(self.fallback, bundle, self.scaling, self.name)
        factored = bundle.factored_task_vectors
        if all(f is not None for f in factored):  # LoRA task vectors: stay factored
            delta = self.scaling * flat_spectrum_low_rank(
                [f for f in factored if f is not None], bundle.base.dtype
            )
        else:
            summed = stacked_task_vectors(bundle).sum(dim=0)
            delta = self.scaling * flat_spectrum(summed)
        return MergedTensor(delta, records=(Record(self.name, {"rule": "iso_c"}),))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [IsoC]
