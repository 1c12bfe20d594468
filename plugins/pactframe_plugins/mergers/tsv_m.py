"""TSV-M: Task Singular Vectors Merge (Gargiulo et al., CVPR 2025)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from pactframe import LayerBundle, MergedTensor, Merger, Record, hookimpl, param
from pactframe.linalg import as_working
from pactframe.validation import one_of, real
from pactframe_plugins.mergers._common import (
    fallback_field,
    float_support_reason,
    merge_with_fallback,
    polar_factor,
    require_float,
)
from pactframe_plugins.mergers.average import WeightAveraging

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
class TSVM(Merger):
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

    Tensors that are not matrices go to ``fallback`` (default: mean of the task
    vectors), multiplied by ``scaling``, as in the authors' code. A task vector
    of rank below its budget makes its trailing singular vectors arbitrary
    (LAPACK-dependent) and they do enter the polar factor, as in the original.
    Cost: ``T + 2`` exact SVDs per matrix.

    Factored task vectors (LoRA adapters, ``bundle.factored_task_vectors``) are
    decomposed from their factors (QR + ``r x r`` SVD, exact); such a task lists
    at most ``r`` triplets, so a budget above its rank keeps only the defined ones
    (where the dense path would add arbitrary zero-value directions, see
    docs/lora.md). The polar factors are then of ``m x K`` and ``K x n`` with
    ``K = sum_t min(k_t, r_t)``.
    """

    name: ClassVar[str] = "tsv_m"

    scaling: float = param(1.0, validator=real(), help="alpha multiplying the merged SUM")
    rank_split: str = param(
        "floor",
        validator=one_of(RANK_SPLITS),
        help="per-task budget of the min(m, n) slots: 'floor' = int(r/T) each, remainder "
        "empty (original TSV); 'balanced' = first r mod T tasks get one more (PACT repo)",
    )
    fallback: Merger = fallback_field(WeightAveraging())

    def supports(self, bundle: LayerBundle) -> str | None:
        return float_support_reason(bundle)

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        require_float(bundle, self.name)
        if not bundle.is_matrix:
            return merge_with_fallback(self.fallback, bundle, self.scaling, self.name)
        ranks = task_ranks(min(bundle.base.shape), bundle.num_tasks, self.rank_split)
        record = Record(self.name, {"rule": "tsv_m", "task_ranks": ranks})
        if sum(ranks) == 0:
            return MergedTensor(torch.zeros_like(bundle.base), records=(record,))
        us, ss, vhs = [], [], []
        factored = bundle.factored_task_vectors
        for t, k in enumerate(ranks):
            low_rank = factored[t]
            if low_rank is not None:  # a LoRA task vector: exact SVD from its factors
                f = low_rank.svd()
                U, S, Vh = f.U, f.S, f.Vh
            else:
                delta_t = bundle.task_vectors[t]
                U, S, Vh = torch.linalg.svd(as_working(delta_t), full_matrices=False)
            us.append(U[:, :k])
            ss.append(S[:k])
            vhs.append(Vh[:k])
        if sum(int(s.shape[0]) for s in ss) == 0:  # only rank-0 (untouched) factored tasks
            return MergedTensor(torch.zeros_like(bundle.base), records=(record,))
        u_perp = polar_factor(torch.cat(us, dim=1))
        vh_perp = polar_factor(torch.cat(vhs, dim=0))
        merged = (u_perp * torch.cat(ss).unsqueeze(0)) @ vh_perp
        delta = (self.scaling * merged).to(bundle.base.dtype)
        return MergedTensor(delta, records=(record,))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [TSVM]
