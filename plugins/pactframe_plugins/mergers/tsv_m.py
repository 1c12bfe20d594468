"""TSV-M: Task Singular Vectors Merge (Gargiulo et al., CVPR 2025)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from pactframe import Factorization, LayerBundle, MergedTensor, Merger, Record, hookimpl, param
from pactframe.linalg import as_working, numerical_rank, rank_rtol
from pactframe.seeding import generator
from pactframe.validation import one_of
from pactframe_plugins.mergers._svd import SVDMerger, TripletStack, decompose_tasks

RANK_SPLITS = ("floor", "balanced")


def task_ranks(rank: int, num_tasks: int, rank_split: str) -> list[int]:
    """How many singular components each task keeps out of ``rank = min(m, n)``.

    - ``"floor"`` (original TSV code, ``sv_reduction = 1/T``): every task keeps
      ``int(rank / T)``; the remainder ``rank mod T`` stays empty (zero
      singular values). With ``T > rank`` every task keeps 0 and the merge is 0.
    - ``"balanced"`` (PACT repository's split): ``rank // T`` each, and the first
      ``rank mod T`` tasks (in bundle order) keep one more, so all ``rank``
      slots are used.
    """
    base, remainder = divmod(rank, num_tasks)
    if rank_split == "floor":
        return [base] * num_tasks
    return [base + (1 if t < remainder else 0) for t in range(num_tasks)]


@attrs.frozen
class TSVM(SVDMerger):
    """TSV-M: keep each task's top singular triplets, orthogonalise, reassemble (SUM).

    Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model
    Merging", CVPR 2025 (TSV-Merge). For a weight ``(m, n)`` with ``r = min(m, n)``
    and task budgets ``k_t`` (:func:`task_ranks`):

    1. ``Delta_t = U_t diag(s_t) Vh_t`` (exact SVD); keep the top ``k_t`` triplets;
    2. concatenate ``U_hat = [U_1[:, :k_1] ... U_T[:, :k_T]]`` (``m x K``),
       ``s_hat`` (``K``), ``Vh_hat`` (``K x n``), with ``K = sum_t k_t``;
    3. orthogonalise both sides with the polar factor (nearest orthonormal
       matrix; SVD ``u @ vh``): ``U_perp = polar(U_hat)``, ``Vh_perp = polar(Vh_hat)``;
    4. ``delta = alpha * U_perp diag(s_hat) Vh_perp``.

    Authors' code ``AntoAndGar/task_singular_vectors``
    ``src/utils/TSVM_utils.py::compute_and_sum_svd_mem_reduction`` (same in
    FusionBench ``task_singular_vector/utils/TSVM_utils.py``). Empty remainder
    slots of the ``"floor"`` split have singular value 0 there, so leaving them
    out (as here) gives the same matrix.

    Scaling convention: SUM. With tasks of mutually orthogonal row and column
    spaces, each of rank ``r / T``, the result is ``alpha * sum_t Delta_t``.
    ``scaling`` is the paper's ``alpha`` (validation grid 0.1..3.0; FusionBench
    ``alpha`` default 1.0, ours too).

    Rank-revealing (``docs/mergers/tsv_m.md``): step 1 keeps at most the
    numerical rank of ``Delta_t`` (``sigma > sigma_max(Delta_t) max(m, n) eps``),
    and step 3 is the polar factor on the numerical range of the stack
    (:func:`~pactframe_plugins.mergers._common.polar_in_span`, the partial
    isometry ``U_r Vh_r``; directions of the stack with singular value at most
    ``sqrt(eps)`` are coincident bases, not new directions). The authors' code
    lets the arbitrary (LAPACK-dependent) singular vectors of a task vector of
    rank below its budget, and the arbitrary completion of a rank-deficient
    stack (identical tasks, ``{D, -D}``, every task filtered off the same
    pre-trained core by PACT), into the polar factors: such results change by
    O(1) under 1e-12 perturbations and can write outside the tasks' spans
    (``{D, -D}`` gave a non-zero merge). Here the merged delta's row and column
    spaces lie in the span of the task vectors' ones, ``{D, -D}`` merges to 0
    and ``{D, D}`` to ``D``'s top ``k`` triplets. On generic full-rank inputs
    (stacks of full column rank) the result is the authors' exactly.

    Tensors that are not matrices go to ``fallback`` (default: mean of the task
    vectors), multiplied by ``scaling``, as in the authors' code.

    Cost (``docs/mergers/tsv_m.md``, "Cost and routes"): step 1 is one call of
    ``decomposer`` per task with rank ``k_t`` (``exact_svd``: a full SVD,
    ``randomized_svd``: a rank-``k_t`` sketch, task ``t`` seeded with
    ``generator(seed, "tsv_m", t)``); step 3 is ``route``: ``exact`` = two SVDs
    of the stacks (the authors'), ``gram`` = two ``K x K`` float64
    eigendecompositions of the stacks' Gram matrices
    (:func:`pactframe.linalg.gram_polar_in_span`, same rank rule); ``auto``
    picks exact for ``exact_svd`` and gram otherwise. With the defaults
    (``exact_svd``, ``auto``) the result is today's exact TSV-M.

    Factored task vectors (LoRA adapters, ``bundle.factored_task_vectors``) are
    decomposed from their factors (QR + ``r x r`` SVD, exact,
    :meth:`~pactframe.types.LowRank.truncated_svd` with the same rank rule), so
    the result equals the dense one, also when a budget exceeds the adapter's
    rank (docs/lora.md). The polar factors are then of ``m x K`` and ``K x n``
    with ``K = sum_t min(k_t, rank(Delta_t))``.
    """

    name: ClassVar[str] = "tsv_m"

    rank_split: str = param(
        "floor",
        validator=one_of(RANK_SPLITS),
        help="per-task budget of the min(m, n) slots: 'floor' = int(r/T) each, remainder "
        "empty (original TSV); 'balanced' = first r mod T tasks get one more (PACT repo)",
    )

    def merge_matrix(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        ranks = task_ranks(min(bundle.base.shape), bundle.num_tasks, self.rank_split)
        record = Record(self.name, {"rule": "tsv_m", "task_ranks": ranks})
        if sum(ranks) == 0:
            return MergedTensor(torch.zeros_like(bundle.base), records=(record,))
        route = self.resolved_route
        stack = TripletStack()
        factored = bundle.factored_task_vectors
        dense: dict[int, Factorization] = {}
        for k in sorted(set(ranks)):  # tasks of one budget decomposed together
            tasks = [t for t, r in enumerate(ranks) if r == k and factored[t] is None]
            gens = [generator(bundle.seed, self.name, t) for t in tasks]
            dense |= decompose_tasks(
                self.decomposer,
                lambda t: as_working(bundle.task_vectors[t]),
                tasks,
                k,
                gens,
                bundle.base.device,
            )
        rtol = rank_rtol(bundle.base.shape, as_working(bundle.base).dtype)
        for t, k in enumerate(ranks):
            low_rank = factored[t]
            if low_rank is not None:  # a LoRA task vector: the exact SVD from its factors
                f = low_rank.truncated_svd()  # already clipped to rank(Delta_t)
                keep = min(k, int(f.S.numel()))
            else:
                f = dense[t]
                keep = min(k, numerical_rank(f.S, rtol))  # clip to rank
            stack.add(f.U, f.S, f.Vh, keep)
        kept = stack.kept
        if sum(kept) < sum(ranks):
            record = Record(self.name, {"rule": "tsv_m", "task_ranks": ranks, "kept_ranks": kept})
        if sum(kept) == 0:
            return MergedTensor(torch.zeros_like(bundle.base), records=(record,))
        u_perp, sigma_hat, vh_perp = stack.orthogonalised(route)
        merged = (u_perp * sigma_hat.unsqueeze(0)) @ vh_perp
        delta = (self.scaling * merged).to(bundle.base.dtype)
        return MergedTensor(delta, records=(record,))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [TSVM]
