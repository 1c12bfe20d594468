"""PACT: cross-task Load-Bearing-Wall (LBW) protection of task vectors.

Shi et al., "PACT: Preserving Anchored Cores in Task-vectors for Model
Merging", arXiv 2606.18627; the operator as implemented in the authors' code
(``full-finetune/src/utils/pact_utils.py``), with the three defects of that
code fixed (see ``docs/pact.md``).

The subspace helpers below (:func:`core_basis`, :func:`relied_subspace`,
:func:`protect_bases`...) are shared with the ``intrusion_energy`` evaluator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
import torch

from pactframe import (
    Decomposer,
    LayerBundle,
    Preprocessor,
    Record,
    component_field,
    hookimpl,
    param,
)
from pactframe.errors import InputError, InvalidParameterError
from pactframe.linalg import as_working, numerical_rank, orth, rank_rtol, unit_scale_rtol
from pactframe.matrix import from_linear_layout, linear_layout
from pactframe.seeding import generator
from pactframe.types import Factorization, LowRank
from pactframe.validation import integer, one_of, regex
from pactframe_plugins.decomposers.exact_svd import ExactSVD

#: Names PACT leaves alone by default (searched anywhere in the tensor name):
#: token / position embeddings, classification and LM heads, every norm
#: (LayerNorm, RMSNorm, ``ln_1``...), CLIP's ``text_projection`` and ``logit_scale``.
DEFAULT_EXCLUDE = r"embed|lm_head|head|norm|ln_|text_projection|logit_scale"

#: The released code's threshold below which a relied residual counts as empty
#: (used only with ``orth_method="qr"``, for parity with that code).
_REFERENCE_EMPTY_RESIDUAL = 1e-6


# ----------------------------------------------------------------- subspace helpers
def check_base(bundle: LayerBundle) -> None:
    """The base must be a real pre-trained weight: finite and not all zeros.

    The released PACT code merged with a zero "pre-trained" tensor, whose SVD
    is an arbitrary (identity) basis; we refuse it instead.
    """
    if not bool(torch.isfinite(bundle.base).all()):
        raise InputError(
            f"Tensor {bundle.name!r}: the base weight holds NaN or inf values, so its core "
            "subspace is undefined. Check the pre-trained checkpoint."
        )
    if not bool(torch.any(bundle.base != 0)):
        raise InputError(
            f"Tensor {bundle.name!r}: the base (pre-trained) weight is all zeros, so PACT has "
            f"no pre-trained core to protect (received a zero tensor of shape "
            f"{tuple(bundle.base.shape)}). Pass the real pre-trained checkpoint as the base, "
            "or exclude this tensor with PACT's 'exclude' pattern."
        )


def leading_basis(factorization: Factorization, side: str) -> torch.Tensor:
    """Orthonormal basis of the leading singular subspace on ``side``, clipped to
    the numerical rank (``S > S_max * max(m, n) * eps``): singular vectors of zero
    singular values are arbitrary and must not enter a protect space.

    Returns ``V_r`` ``(n, r)`` for ``side == "right"``, ``U_r`` ``(m, r)`` for ``"left"``.
    """
    s = factorization.S
    keep = numerical_rank(s, rank_rtol(factorization.shape, s.dtype))
    if side == "right":
        return factorization.right_basis(keep)
    return factorization.left_basis(keep)


def core_basis(factorization: Factorization, side: str = "right") -> torch.Tensor:
    """``V_{0,K}`` (or ``U_{0,K}``): the pre-trained core, PACT paper eq. (37)."""
    return leading_basis(factorization, side)


def orth_unit_scale(matrix: torch.Tensor) -> torch.Tensor:
    """Rank-revealing orthonormal basis of ``range(matrix)`` for a matrix whose
    columns have unit scale (orthonormal vectors, or their projections).

    Its singular values are cosines / sines of principal angles, so they are
    compared with an ABSOLUTE tolerance ``sqrt(eps)`` (1.5e-8 in float64, 3.5e-4
    in float32): a direction that lies in a task's own subspace up to the
    rounding of two different SVDs must not become a noise-determined protect
    direction. Above that floor, :func:`pactframe.linalg.orth` keeps the
    numerical range. Returns ``(d, r)``; ``(d, 0)`` when nothing is left.
    """
    d, c = matrix.shape
    if c == 0:
        return matrix.new_zeros((d, 0))
    gram = matrix.transpose(0, 1) @ matrix
    sigma_max = math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))
    rtol = unit_scale_rtol(sigma_max, matrix.shape, matrix.dtype)
    if rtol >= 1.0:  # sigma_max itself is at or below the sqrt(eps) floor
        return matrix.new_zeros((d, 0))
    return orth(matrix, rtol=rtol)


def relied_subspace(
    core: torch.Tensor, task: torch.Tensor, *, basis: str = "svd"
) -> torch.Tensor:
    """Task ``t``'s implicit-reliance (LBW) subspace, shape ``(d, r_t)`` with ``r_t <= K``::

        V_rel_t = orth((I - V_tk V_tk^T) V_0K)

    computed as ``V_0K - V_tk (V_tk^T V_0K)`` (never a ``d x d`` matrix).
    ``core`` is ``V_0K`` ``(d, K)``, ``task`` is ``V_tk`` ``(d, k)``, both orthonormal.
    ``basis="svd"`` (default) uses :func:`orth_unit_scale`; ``basis="qr"``
    reproduces the released code (plain QR, empty when the residual's
    Frobenius norm is below 1e-6).
    """
    d, K = core.shape
    if K == 0:
        return core.new_zeros((d, 0))
    residual = core - task @ (task.transpose(0, 1) @ core)
    if basis == "qr":
        if float(torch.linalg.vector_norm(residual)) < _REFERENCE_EMPTY_RESIDUAL:
            return core.new_zeros((d, 0))
        return torch.linalg.qr(residual).Q
    return orth_unit_scale(residual)


def protect_bases(relied: Sequence[torch.Tensor], *, basis: str = "svd") -> list[torch.Tensor]:
    """``Q_j = orth(concat_{i != j} V_rel_i)`` for every task ``j``, each ``(d, p_j)``
    with ``p_j <= min(d, sum_{i != j} r_i)``; an empty union gives ``(d, 0)``.
    ``basis`` as in :func:`relied_subspace` (``"qr"`` keeps every column)."""
    out = []
    for j in range(len(relied)):
        others = [r for i, r in enumerate(relied) if i != j and r.shape[1] > 0]
        if not others:
            out.append(relied[j].new_zeros((relied[j].shape[0], 0)))
            continue
        union = torch.cat(others, dim=1)
        out.append(torch.linalg.qr(union).Q if basis == "qr" else orth_unit_scale(union))
    return out


def remove_right(delta: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``Delta - (Delta Q) Q^T``: remove the input-side (row-space) part in ``range(Q)``.

    When ``Q`` spans the whole input space the result is exactly 0 (not the
    rounding residue of the subtraction, whose direction would be noise)."""
    if q.shape[1] == delta.shape[1]:
        return torch.zeros_like(delta)
    return delta - (delta @ q) @ q.transpose(0, 1)


def remove_left(delta: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``Delta - Q (Q^T Delta)``: remove the output-side (column-space) part in ``range(Q)``
    (exactly 0 when ``Q`` spans the whole output space, as :func:`remove_right`)."""
    if q.shape[1] == delta.shape[0]:
        return torch.zeros_like(delta)
    return delta - q @ (q.transpose(0, 1) @ delta)


_REMOVERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "right": remove_right,
    "left": remove_left,
}


def check_orthonormal_decomposer(instance: Any, attribute: Any, value: Any) -> None:
    """attrs-style validator: an orthonormal decomposer that needs no covariance."""
    if not isinstance(value, Decomposer) or value.requires_covariance:
        raise InvalidParameterError(
            f"The {attribute.name!r} parameter of {type(instance).__name__} must be a "
            "decomposer with orthonormal factors that needs no covariance (e.g. 'exact_svd' "
            f"or 'randomized_svd'). Got {value!r} instead."
        )


# ----------------------------------------------------------------- the preprocessor
@attrs.frozen
class PACTAligner(Preprocessor):
    """PACT's Load-Bearing-Wall aligner: cross-task protection of task vectors.

    Shi et al., arXiv 2606.18627 (PACT): the paper states the operator in words
    (remove from the task vectors the components aligned with the LBW subspaces);
    the equations are those of the authors' ``pact_utils.py``
    (``compute_implicit_reliance_space``, ``orthogonal_core_filtering``). For a
    2-D weight ``W_0`` ``(d_out, d_in)`` and task vectors ``Delta_t``
    ``(d_out, d_in)``, ``t = 1..T`` (right = input side)::

        V_0K   = top-K right singular vectors of W_0                  (d_in, K)
        V_tk   = top-k right singular vectors of Delta_t              (d_in, k)
        V_rel_t = orth((I - V_tk V_tk^T) V_0K)                         (d_in, r_t <= K)
        Q_j    = orth(concat_{i != j} V_rel_i)                         (d_in, p_j)
        Delta_j' = Delta_j - (Delta_j Q_j) Q_j^T

    ``V_rel_t`` is the part of the pre-trained core that task ``t`` relies on
    without rewriting it (its LBW subspace); each task is filtered against the
    OTHER tasks' LBW subspaces, so after any merge no other task writes into
    task ``i``'s anchored core: ``Delta_j' V_rel_i = 0`` for ``i != j``.
    ``orth`` is rank-revealing (:func:`pactframe.linalg.orth`), so
    ``p_j <= min(d_in, K + (T - 1) k)`` and the result is positively
    homogeneous and reproducible. No ``d_in x d_in`` matrix is ever formed.

    Sides: ``"right"`` (default, the paper's and the code's) acts on the input
    side as above. ``"left"`` is the same construction on the output side, with
    the top left singular vectors ``U_0K``, ``U_tk`` and
    ``Delta_j' = Delta_j - Q_j (Q_j^T Delta_j)``. ``"both"`` applies both
    filters, ``Delta_j' = (I - Q_j^L Q_j^L^T) Delta_j (I - Q_j^R Q_j^R^T)``
    (the two commute), so the other tasks' relied subspaces are protected on
    both sides: ``Delta_j' V_rel_i = 0`` and ``U_rel_i^T Delta_j' = 0``. The
    input side follows ``bundle.input_axis`` (transposed ``Conv1D`` layouts work).

    Decompositions: exactly ``T + 1`` calls of ``decomposer`` per filtered
    tensor (one of ``W_0`` with rank ``K``, one of each ``Delta_t`` with rank
    ``k``); ``exact_svd`` is the paper's PACT, ``randomized_svd`` its Efficient
    PACT (the call for ``W_0`` gets ``generator(seed, "pact", 0)``, task ``t``
    gets ``generator(seed, "pact", t + 1)``). Both bases are clipped to the
    numerical rank. Tensors that PACT does not touch (excluded names, non-matrix
    tensors, ``T = 1``, ``K = 0``) pass through unchanged with no decomposition,
    and every bundle gets a ``Record("pact", ...)`` saying what was done.

    Computed in the working dtype of the inputs (half precision in float32) and
    returned in the task vectors' dtype.
    """

    name: ClassVar[str] = "pact"

    core_rank: int = param(
        15,
        validator=integer(0),
        help="K: top right singular vectors of the pre-trained weight forming its core "
        "(absolute; clipped to min(d_out, d_in)); the paper's (K, k) = (15, 8)",
    )
    task_rank: int = param(
        8,
        validator=integer(0),
        help="k: top singular vectors of each task vector (its explicit, active subspace; "
        "absolute, clipped to min(d_out, d_in))",
    )
    side: str = param(
        "right",
        validator=one_of(("right", "left", "both")),
        help="'right': input side (paper, code); 'left': output side; 'both': both filters",
    )
    decomposer: Decomposer = component_field(
        "decomposer",
        ExactSVD(),
        help="top-K / top-k subspaces: 'exact_svd' (PACT) or 'randomized_svd' (Efficient PACT)",
        validator=check_orthonormal_decomposer,
    )
    exclude: str = param(
        DEFAULT_EXCLUDE,
        validator=regex(),
        help="regex searched in tensor names; matches pass through unchanged",
    )
    orth_method: str = param(
        "svd",
        validator=one_of(("svd", "qr")),
        help="'svd': rank-revealing orth (default); 'qr': the released code's plain QR "
        "(noise-dependent on rank-deficient unions; parity checks only)",
    )


    # ---------------------------------------------------------------- API
    def pass_through_reason(self, bundle: LayerBundle) -> str | None:
        """Why PACT leaves ``bundle`` unchanged, or ``None`` if it filters it."""
        if not bundle.is_matrix:
            return f"not a matrix (shape {list(bundle.base.shape)})"
        if re.search(self.exclude, bundle.name):
            return f"name matches the exclude pattern {self.exclude!r}"
        if bundle.num_tasks == 1:
            return "a single task: there is no other task's subspace to protect"
        if self.core_rank == 0:
            return "core_rank is 0: the pre-trained core is empty"
        return None

    def preprocess(self, bundle: LayerBundle, state: Any = None) -> LayerBundle:
        reason = self.pass_through_reason(bundle)
        if reason is not None:
            skipped = {"action": "passed_through", "reason": reason}
            return bundle.with_record(Record(self.name, skipped))
        check_base(bundle)
        axis = bundle.input_axis
        base = as_working(linear_layout(bundle.base, axis))
        factored = bundle.factored_task_vectors
        if all(f is not None for f in factored):  # LoRA task vectors: filter the factors
            return self._preprocess_low_rank(bundle, base, [f for f in factored if f is not None])
        deltas = [as_working(linear_layout(tv, axis)) for tv in bundle.task_vectors]
        full = min(base.shape)
        K, k = min(self.core_rank, full), min(self.task_rank, full)

        sides = ("right", "left") if self.side == "both" else (self.side,)

        def bases(matrix: torch.Tensor, rank: int, index: int) -> dict[str, torch.Tensor]:
            # copies of the leading singular vectors only: the full factors of an
            # exact SVD are freed at once (peak memory ~ one SVD, not T + 1)
            f = self.decomposer.decompose(
                matrix, rank, generator=generator(bundle.seed, self.name, index)
            )
            return {side: leading_basis(f, side).clone() for side in sides}

        core = bases(base, K, 0)
        tasks = [bases(d, k, t + 1) for t, d in enumerate(deltas)]
        names = bundle.task_names
        data = self._record_head(K, k)
        filtered = self._filter_sides(sides, core, tasks, deltas, _REMOVERS, names, data)
        data["removed_energy"] = {
            n: _removed_fraction(before, after) for n, before, after in zip(names, deltas, filtered)
        }
        out = [
            from_linear_layout(f, axis).to(tv.dtype)
            for f, tv in zip(filtered, bundle.task_vectors)
        ]
        return bundle.with_task_vectors(out, record=Record(self.name, data))


    def _record_head(self, K: int, k: int) -> dict[str, Any]:
        """The first keys of PACT's record for a filtered tensor."""
        return {
            "action": "filtered",
            "side": self.side,
            "decomposer": self.decomposer.name,
            "core_rank": K,
            "task_rank": k,
        }

    def _filter_sides(
        self,
        sides: Sequence[str],
        core: dict[str, torch.Tensor],
        tasks: list[dict[str, torch.Tensor]],
        deltas: list[Any],
        removers: dict[str, Callable[[Any, torch.Tensor], Any]],
        names: Sequence[str],
        data: dict[str, Any],
    ) -> list[Any]:
        """The cross-task filter, side after side: each task's relied subspace of the
        core, the protect basis from the OTHER tasks' ones, and ``removers[side]``
        applied (dense or factored task vectors alike); the dimensions go into ``data``."""
        filtered = deltas
        for side in sides:
            v0 = core[side]
            relied = [relied_subspace(v0, f[side], basis=self.orth_method) for f in tasks]
            protect = protect_bases(relied, basis=self.orth_method)
            filtered = [removers[side](d, q) for d, q in zip(filtered, protect)]
            data[side] = {
                "core_dim": int(v0.shape[1]),
                "relied_dims": {n: int(r.shape[1]) for n, r in zip(names, relied)},
                "protect_dims": {n: int(q.shape[1]) for n, q in zip(names, protect)},
            }
        return filtered

    def _preprocess_low_rank(
        self, bundle: LayerBundle, base: torch.Tensor, factored: list[LowRank]
    ) -> LayerBundle:
        """PACT on factored task vectors ``Delta_t = B_t A_t`` (LoRA), never forming them.

        The task subspaces come from ``decomposer.decompose_low_rank`` (exact from the
        factors for exact_svd / randomized_svd), and the filters act on one factor:
        ``Delta Q Q^T`` removed on the right is ``B (A - (A Q) Q^T)``, on the left
        ``(B - Q (Q^T B)) A``; so the result is factored again, of the same rank.
        """
        axis = bundle.input_axis
        lin = [
            LowRank(as_working(f.B), as_working(f.A)) if axis == 1 else
            LowRank(as_working(f.B), as_working(f.A)).transpose()
            for f in factored
        ]
        full = min(base.shape)
        K, k = min(self.core_rank, full), min(self.task_rank, full)
        sides = ("right", "left") if self.side == "both" else (self.side,)
        core_f = self.decomposer.decompose(base, K, generator=generator(bundle.seed, self.name, 0))
        core = {side: leading_basis(core_f, side).clone() for side in sides}
        tasks = []
        for t, f in enumerate(lin):
            tf = self.decomposer.decompose_low_rank(
                f, k, generator=generator(bundle.seed, self.name, t + 1)
            )
            tasks.append({side: leading_basis(tf, side).clone() for side in sides})
        names = bundle.task_names
        data = {**self._record_head(K, k), "factored": True}
        filtered = self._filter_sides(sides, core, tasks, lin, _LOW_RANK_REMOVERS, names, data)
        removed = {}
        for n, before, after in zip(names, lin, filtered):
            total = before.squared_norm()
            diff = LowRank(
                torch.cat([before.B, after.B], dim=1), torch.cat([before.A, -after.A], dim=0)
            )
            removed[n] = 0.0 if total == 0.0 else diff.squared_norm() / total
        data["removed_energy"] = removed
        dtype = bundle.base.dtype
        out = [
            (f if axis == 1 else f.transpose()).map(lambda x: x.to(dtype).contiguous())
            for f in filtered
        ]
        return bundle.with_task_vectors(out, record=Record(self.name, data))


def remove_right_low_rank(delta: LowRank, q: torch.Tensor) -> LowRank:
    """:func:`remove_right` of a factored ``Delta = B A``: ``B (A - (A Q) Q^T)``, the same
    rank; exactly 0 (a zero ``A``) when ``Q`` spans the whole input space."""
    if q.shape[1] == delta.shape[1]:
        return LowRank(delta.B, torch.zeros_like(delta.A))
    return LowRank(delta.B, delta.A - (delta.A @ q) @ q.transpose(0, 1))


def remove_left_low_rank(delta: LowRank, q: torch.Tensor) -> LowRank:
    """:func:`remove_left` of a factored ``Delta = B A``: ``(B - Q (Q^T B)) A``; exactly 0
    (a zero ``B``) when ``Q`` spans the whole output space."""
    if q.shape[1] == delta.shape[0]:
        return LowRank(torch.zeros_like(delta.B), delta.A)
    return LowRank(delta.B - q @ (q.transpose(0, 1) @ delta.B), delta.A)


_LOW_RANK_REMOVERS: dict[str, Callable[[LowRank, torch.Tensor], LowRank]] = {
    "right": remove_right_low_rank,
    "left": remove_left_low_rank,
}


def _removed_fraction(before: torch.Tensor, after: torch.Tensor) -> float:
    """``||Delta - Delta'||_F^2 / ||Delta||_F^2`` (0 for a zero task vector)."""
    total = float(torch.linalg.vector_norm(before)) ** 2
    if total == 0.0:
        return 0.0
    return float(torch.linalg.vector_norm(before - after)) ** 2 / total


@hookimpl
def pactframe_register_preprocessors() -> list[type[Preprocessor]]:
    return [PACTAligner]
