"""Iso-CTS: isotropic merging in common and task-specific subspaces (Marczak et al., ICML 2025)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from pactframe import LayerBundle, MergedTensor, Merger, Record, hookimpl, param
from pactframe.linalg import as_working, derived_rtol, gram_svd, numerical_rank
from pactframe.matrix import from_linear_layout, linear_layout
from pactframe.seeding import generator
from pactframe.types import LowRank
from pactframe.validation import real
from pactframe_plugins.mergers._svd import SVDMerger, TripletStack, decompose_tasks


def subspace_sizes(rank: int, num_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """``(c, s)``: common-space dimensions and dimensions per task, with ``c + T s = rank``.

    As the authors' code: ``c = int(rank * f)``, then the task-specific total
    ``rank - c`` is rounded (Python ``round``, half to even) to a multiple of
    ``T`` and ``c`` absorbs the difference. Where the rounding would ask for
    more than ``rank`` dimensions (``T > rank`` with a small ``f``), ``s`` is
    clipped to ``rank // T`` (the original code would index with a negative ``c``).
    """
    common = int(rank * common_space_fraction)
    per_task = min(round((rank - common) / num_tasks), rank // num_tasks)
    return rank - per_task * num_tasks, per_task


@attrs.frozen
class IsoCTS(SVDMerger):
    """Iso-CTS: common subspace of the sum plus task-specific residual subspaces,
    orthogonalised, with a flat (isotropic) spectrum. SUM convention.

    Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
    Task-Specific Subspaces", ICML 2025 (arXiv 2502.04959), Sec. 4, Iso-CTS.
    For a weight in ``(d_out, d_in)`` layout ``(m, n)``, ``r = min(m, n)`` and
    ``(c, s) = subspace_sizes(r, T, f)``:

    1. ``M = sum_t Delta_t = U diag(S) Vh``; the common space is ``U_c = U[:, :c]``
       with ``S_c``, ``Vh_c``;
    2. for each task, the residual outside the common output space
       ``R_t = Delta_t - U_c U_c^T Delta_t = u_t diag(sigma_t) vh_t`` contributes its
       top ``s`` triplets;
    3. ``U_hat = [u_1[:, :s] ... u_T[:, :s], U_c]`` and ``Vh_hat`` likewise; both
       are orthogonalised with the polar factor (SVD ``u @ vh``);
    4. ``delta = alpha * mean(sigma_hat) U_perp Vh_perp`` where ``sigma_hat``
       concatenates the ``T s`` task-specific and the ``c`` common singular values.

    Authors' code ``danielm1405/iso-merging`` ``src/utils/iso.py`` (same in FusionBench
    ``isotropic_merging/iso_utils.py::iso_cts``, ``common_space_fraction`` 0.8).
    ``f = 1`` (or ``T = 1``) gives Iso-C. Transposed layouts (``input_axis = 0``)
    are viewed as ``(d_out, d_in)``, so the common space is always the output side.

    Rank-revealing (``docs/mergers/iso_cts.md``): every step acts inside the
    numerical rank: the common space keeps at most ``rank(M)`` directions
    (``sigma > sigma_max(M) max(sqrt(eps), max(m, n) eps)``, as Iso-C), task ``t`` only the residual
    directions with ``sigma > sqrt(eps) ||Delta_t||_2`` (the residual is computed
    with ``U_c`` from another SVD, whose error ``eps sigma_max(M) / gap`` can far
    exceed ``max(m, n) eps``; :func:`pactframe.linalg.derived_rtol`), so a
    residual that is rounding noise contributes nothing,
    the mean runs over the kept singular values only, and both stacks are
    orthogonalised on their span
    (:func:`~pactframe_plugins.mergers._common.polar_in_span`). Null directions
    of a rank-deficient sum (after PACT with ``T >= 3``) or residual are left
    null instead of being filled with arbitrary LAPACK vectors at full weight.
    On generic full-rank inputs the result is the authors' exactly; when a stack
    is rank-deficient the output's non-zero singular values are
    ``mean(sigma_hat)`` times cosines of the angles between the two stacks' slot
    spaces (all equal to ``mean(sigma_hat)`` when only one side is deficient).

    ``scaling`` is the paper's ``alpha`` (default 1.0 as FusionBench). Tensors that
    are not matrices go to ``fallback`` (default: mean of the task vectors),
    multiplied by ``scaling``, as in the authors' code. Cost: ``T + 3`` exact SVDs
    and ``T`` spectral norms with the defaults.

    Routes (``docs/mergers/iso_cts.md``): the residuals' top ``s`` triplets come
    from ``decomposer`` (task ``t`` seeded with ``generator(seed, "iso_cts", t)``);
    ``route`` decides the SVD of the sum (its top ``c`` of ``r`` directions: a
    sketch would cost as much as the SVD) and the two polar factors: ``exact``
    = SVDs (the authors'), ``gram`` = float64 Gram eigendecompositions
    (:func:`pactframe.linalg.gram_svd`, same rank rule for half/float32 inputs);
    ``auto`` = exact with ``exact_svd``, gram otherwise.

    When every task vector is factored (LoRA adapters, docs/lora.md) the sum and
    the residuals ``(B_t - U_c U_c^T B_t) A_t`` stay factored (QR + small SVDs) and
    the same rank rules apply, so the result equals the dense one.
    """

    name: ClassVar[str] = "iso_cts"

    common_space_fraction: float = param(
        0.8,
        validator=real(0.0, 1.0),
        help="fraction f of the min(m, n) directions taken from the common space of the "
        "sum (rest split equally between tasks); FusionBench common_space_fraction",
    )

    def merge_matrix(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        axis = bundle.input_axis
        factored = bundle.factored_task_vectors
        T = bundle.num_tasks
        route = self.resolved_route
        lin: list[LowRank] = []
        deltas: list[torch.Tensor] = []
        if all(f is not None for f in factored):  # LoRA task vectors: SVDs from the factors
            lin = [
                (f if axis == 1 else f.transpose()).map(as_working)
                for f in factored
                if f is not None
            ]
            shape, dtype = lin[0].shape, lin[0].dtype
            joint = LowRank(
                torch.cat([f.B for f in lin], dim=1), torch.cat([f.A for f in lin], dim=0)
            )
            fs = joint.svd()  # lists rank(M) <= sum r_t values; the rest are zero
            U, S, Vh = fs.U, fs.S, fs.Vh
        else:
            deltas = [as_working(linear_layout(d, axis)) for d in bundle.task_vectors]
            summed = torch.stack(deltas).sum(dim=0)
            shape, dtype = summed.shape, summed.dtype
            if route == "gram":
                U, S, Vh = gram_svd(summed)  # already clipped to the numerical rank
            else:
                U, S, Vh = torch.linalg.svd(summed, full_matrices=False)
        rank = min(shape)
        common, per_task = subspace_sizes(rank, T, self.common_space_fraction)
        common = min(common, numerical_rank(S, derived_rtol(shape, dtype)))  # as Iso-C
        residual_rtol = derived_rtol(shape, dtype)
        u_common = U[:, :common]
        stack = TripletStack()

        def residual(t: int) -> torch.Tensor:  # Delta_t - U_c U_c^T Delta_t
            return deltas[t] - u_common @ (u_common.transpose(0, 1) @ deltas[t])

        dense_tasks = [] if lin else list(range(T))
        found = decompose_tasks(
            self.decomposer,
            residual,
            dense_tasks,
            per_task,
            [generator(bundle.seed, self.name, t) for t in dense_tasks],
            bundle.base.device,
        )
        for t in range(T):
            if lin:  # R_t = (B - U_c U_c^T B) A, still factored
                f = lin[t]
                r_t = LowRank(f.B - u_common @ (u_common.transpose(0, 1) @ f.B), f.A).svd()
                u_t, s_t, vh_t = r_t.U, r_t.S, r_t.Vh
                s_f = f.svd().S
                scale = float(s_f[0]) if s_f.numel() else 0.0
            else:
                f_t = found[t]
                u_t, s_t, vh_t = f_t.U, f_t.S, f_t.Vh
                scale = float(torch.linalg.matrix_norm(deltas[t], ord=2))
            stack.add(u_t, s_t, vh_t, min(per_task, numerical_rank(s_t, residual_rtol, scale)))
        stack.add(U, S, Vh, common)  # the common space, after the task-specific slots
        if sum(stack.kept) == 0:
            merged = torch.zeros(shape, dtype=dtype, device=bundle.base.device)
        else:
            u_perp, sigma_hat, vh_perp = stack.orthogonalised(route)
            merged = self.scaling * sigma_hat.mean() * (u_perp @ vh_perp)
        delta = from_linear_layout(merged, axis).to(bundle.base.dtype)
        sizes = {"rule": "iso_cts", "common_dims": common, "dims_per_task": per_task}
        return MergedTensor(delta, records=(Record(self.name, sizes),))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [IsoCTS]
