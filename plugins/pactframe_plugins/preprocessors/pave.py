"""PAVE: purified task vectors in a knowledge-aware (activation) subspace.

Sun et al., "Purifying Task Vectors in Knowledge-Aware Subspace" (PAVE),
eq. 5-9 and Algorithm 1; code ``ABgit111/purified_task_vector``. See
``docs/pave.md`` for what differs from the released code and why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
from pactframe.linalg import as_working, gram_rtol, numerical_rank
from pactframe.matrix import from_linear_layout, linear_layout
from pactframe.seeding import generator
from pactframe.types import Factorization
from pactframe.validation import one_of, real, regex
from pactframe_plugins.decomposers._context_svd import CovarianceWeightedSVD, covariance_for
from pactframe_plugins.decomposers.co_svd import ContextOrientedSVD
from pactframe_plugins.preprocessors._rank_allocation import (
    RankAllocation,
    allocate_layer,
    normalized_spectrum,
    normalized_tail_energy,
    spectral_rank_allocation,
    stopping_ratio,
)

__all__ = ["PAVEPurifier", "RankAllocation", "spectral_rank_allocation"]


ROUTES = ("auto", "exact", "gram")


@attrs.frozen(eq=False)
class GramFactors:
    """``W M``'s spectrum and singular basis from the Gram route of :class:`PAVEPurifier`.

    ``vectors`` are the eigenvectors (descending) of the smaller Gram matrix of
    ``W M``: its left singular vectors ``U`` when ``W M`` is wide or square
    (``(W M)(W M)^T = U diag(S^2) U^T``), its right ones ``V`` when tall. All
    float64. :meth:`reconstruct` is ``U_r diag(S_r) Vh_r M^-1`` through the
    identity ``U_r diag(S_r) Vh_r M^-1 = U_r U_r^T W`` (``Vh_r = diag(S_r)^-1 U_r^T
    W M``), so no inverse of ``M`` is formed; in the tall case
    ``U_r = W M V_r diag(S_r)^-1``.
    """

    w: torch.Tensor
    weighted: torch.Tensor
    vectors: torch.Tensor
    S: torch.Tensor
    tall: bool
    dtype: torch.dtype

    @property
    def rank(self) -> int:
        return int(self.S.numel())

    def reconstruct(self, rank: int) -> torch.Tensor:
        """The rank-``rank`` reconstruction ``U_r U_r^T W`` in the weight's working dtype.

        Directions whose singular value the float64 Gram matrix cannot tell from
        zero (``S <= S_max gram_rtol``) are left out: ``u^T W M = 0`` there, so
        they carry nothing of ``W`` (and, tall, ``1/S`` would amplify rounding).
        """
        keep = min(int(rank), numerical_rank(self.S, gram_rtol(self.weighted.shape)))
        if keep <= 0:
            return torch.zeros_like(self.w).to(self.dtype)
        if self.tall:
            left = self.weighted @ self.vectors[:, :keep]  # U_r diag(S_r)
            out = (left / self.S[:keep].square()) @ (left.transpose(0, 1) @ self.w)
        else:
            basis = self.vectors[:, :keep]
            out = basis @ (basis.transpose(0, 1) @ self.w)
        return out.to(self.dtype)


@attrs.frozen
class PAVEPurifier(Preprocessor[RankAllocation]):
    """PAVE purification: ``Delta_PAVE = SVD_r(W_ft C) C^-1 - W_base`` per task.

    Sun et al., PAVE, eq. 5-6. For a 2-D weight of task ``t`` in the
    ``nn.Linear`` layout, ``W_ft`` ``(d_out, d_in)``, and its input covariance
    ``C`` ``(d_in, d_in)`` collected on the fine-tuned model with task data::

        W_ft C_reg = U diag(S) Vh                         (the decomposer, CO-SVD by default)
        W_dagger   = U_r diag(S_r) Vh_r C_reg^-1          (d_out, d_in), rank <= r
        Delta_PAVE = W_dagger - W_base

    ``C_reg`` is the damped covariance of the ``decomposer`` (``co_svd``:
    ``C + eps mean(diag C) I`` by default; ``co_svd`` with
    ``damping_mode="absolute", damping=0.1`` is the released code's schedule).
    The activated error is the tail energy ``||(W_dagger - W_ft) C_reg||_F^2 =
    sum_{j>r} S_j^2`` (eq. 7). Transposed layouts (``bundle.input_axis == 0``,
    GPT-2 ``Conv1D`` ``(d_in, d_out)``) are purified as their transpose.
    Any decomposer can be swapped in by name (``asvd``, ``svd_llm``; a
    decomposer that needs no covariance gives the paper's plain-SVD baseline).

    Rank (``R = min(d_out, d_in)``):

    - ``allocation="spectral"`` (default): PAVE's Algorithm 1 (see
      :mod:`pactframe_plugins.preprocessors._rank_allocation`) on the
      normalized spectra ``s = S / S_max`` with preserved ratio ``rho`` and
      stopping ratio ``gamma = rho - (1 - rho) / 2``. The per-model ratio
      ``rho_i`` needs every layer, so the allocation is computed in
      :meth:`prepare` (state: integers only). ``allocation_output="per_model"``
      (the paper's use) applies ``r = max(1, round(R rho_i))`` to every layer;
      ``"per_layer"`` applies the allocated ``r_i^l`` directly. Without a
      prepass state the allocation is computed from the one bundle (and the
      record says ``"scope": "tensor"``).
    - ``allocation="uniform"`` ("PAVE plain", the paper's ablation):
      ``r = max(1, round(R rho))`` for every task.

    Tensors that are not matrices, names matching ``exclude``, and tasks with
    no covariance keep the plain task vector; every bundle gets a
    ``Record("pave", ...)`` with the action, ranks, ``R``, ``rho_i`` and the
    tail energies per task.

    Cost and routes (``docs/pave.md``, "Cost, and the two routes"). ``route``
    ``gram`` (the default, ``auto``, for the covariance-weighted decomposers
    ``co_svd``, ``asvd``, ``svd_llm``): ``W M`` in float64, the float64
    eigendecomposition of its smaller Gram matrix (eigenvalues only in
    :meth:`prepare`), and ``W_dagger = U_r U_r^T W_ft`` (:class:`GramFactors`),
    which equals eq. 6's ``U_r diag(S_r) Vh_r M^-1`` with no inverse of ``M``.
    ``exact``: :meth:`prepare` computes the singular values of ``W M``,
    :meth:`preprocess` its SVD in ``precision`` (``float32`` by default; float64
    task vectors stay float64; ``float64`` is the behaviour before issue 13) and
    ``Vh M^-1`` in float64. Either way the damping search of ``co_svd``
    (:func:`pactframe.linalg.damped_covariance`, all its checks) runs once per
    covariance in a process: the main pass reuses the accepted ``eps``.
    Returned in the task vectors' dtype.
    """

    name: ClassVar[str] = "pave"
    needs_prepass: ClassVar[bool] = True

    rho: float = param(
        63 / 64,
        validator=real(0.0, 1.0, closed="right"),
        help="preserved rank ratio (paper: 7/8, 15/16, 31/32, 63/64; ViT script 63/64)",
    )
    allocation: str = param(
        "spectral",
        validator=one_of(("spectral", "uniform")),
        help="'spectral': Algorithm 1 across tasks; 'uniform': round(R*rho) for all (PAVE plain)",
    )
    allocation_output: str = param(
        "per_model",
        validator=one_of(("per_model", "per_layer")),
        help="'per_model': r = max(1, round(R*rho_i)) (paper); 'per_layer': r = r_i^l",
    )
    decomposer: Decomposer = component_field(
        "decomposer",
        ContextOrientedSVD(),
        help="context-aware decomposer: 'co_svd' (PAVE), 'asvd', 'svd_llm'",
    )
    precision: str = param(
        "float32",
        validator=one_of(("float32", "float64")),
        help="dtype of the SVD of W C for float32/half task vectors (float64 ones stay "
        "float64; damping and weighting are float64); float64 = the previous, slower behaviour",
    )
    route: str = param(
        "auto",
        validator=one_of(ROUTES),
        help="'gram': float64 eigendecomposition of the smaller Gram matrix of W M and the "
        "map back U_r U_r^T W (no M^-1; covariance-weighted decomposers only); 'exact': SVD "
        "of W M in precision, then Vh M^-1; 'auto': gram for co_svd/asvd/svd_llm, else exact",
    )
    exclude: str | None = param(
        None,
        validator=regex(optional=True),
        help="regex searched in tensor names; matches keep the plain task vector",
    )

    def __attrs_post_init__(self) -> None:
        if self.route == "gram" and not isinstance(self.decomposer, CovarianceWeightedSVD):
            raise InvalidParameterError(
                f"pave: route 'gram' needs a covariance-weighted decomposer (co_svd, asvd, "
                f"svd_llm), whose map back U_r U_r^T W it relies on; got decomposer "
                f"{self.decomposer.name!r}. Use route 'exact' or 'auto' with this decomposer."
            )

    @property
    def uses_gram(self) -> bool:
        """Whether this purifier takes the Gram route (``route`` resolved)."""
        return self.route != "exact" and isinstance(self.decomposer, CovarianceWeightedSVD)

    # ---------------------------------------------------------------- helpers
    def pass_through_reason(self, bundle: LayerBundle) -> str | None:
        """Why the whole tensor keeps its plain task vectors, or ``None``."""
        if not bundle.is_matrix:
            return f"not a matrix (shape {list(bundle.base.shape)})"
        if self.exclude is not None and re.search(self.exclude, bundle.name):
            return f"name matches the exclude pattern {self.exclude!r}"
        if bundle.covariances is None or all(c is None for c in bundle.covariances):
            return "no input covariance for this tensor"
        return None

    def _covariance(self, bundle: LayerBundle, t: int, d_in: int) -> torch.Tensor | None:
        cov = bundle.covariance(t)
        if cov is None:
            return None
        if cov.shape != (d_in, d_in):
            raise InputError(
                f"pave: tensor {bundle.name!r}, task {bundle.task_names[t]!r}: the covariance has "
                f"shape {tuple(cov.shape)} but the weight (input_axis={bundle.input_axis}) has "
                f"d_in = {d_in}, so ({d_in}, {d_in}) is needed. Check that the covariance file "
                "belongs to this model and that its layout matches the weight."
            )
        return cov

    def _spectra(self, bundle: LayerBundle) -> dict[int, torch.Tensor]:
        """Singular values of ``W_ft M`` for each task with a covariance (the prepass)."""
        out = self._decompose(bundle, spectra_only=True)
        return {t: v for t, v in out.items() if isinstance(v, torch.Tensor)}

    def _factorizations(self, bundle: LayerBundle) -> dict[int, Factorization | GramFactors]:
        """Full factorization of ``W_ft`` (as ``(d_out, d_in)``) for each task with a covariance."""
        out = self._decompose(bundle, spectra_only=False)
        return {t: v for t, v in out.items() if not isinstance(v, torch.Tensor)}

    def _decompose(
        self, bundle: LayerBundle, *, spectra_only: bool
    ) -> dict[int, Factorization | GramFactors | torch.Tensor]:
        """Per task with a covariance: its factors, or (``spectra_only``) its ``S``."""
        out: dict[int, Factorization | GramFactors | torch.Tensor] = {}
        for t in range(bundle.num_tasks):
            w = as_working(linear_layout(bundle.finetuned(t), bundle.input_axis))
            cov = self._covariance(bundle, t, int(w.shape[1]))
            if cov is None:
                continue
            if self.uses_gram:
                out[t] = self._gram(w, cov, spectra_only)
                continue
            if isinstance(self.decomposer, CovarianceWeightedSVD):
                out[t] = self._weighted_svd(w, cov, spectra_only)
                continue
            f = self.decomposer.decompose(
                w,
                None,
                covariance=cov if self.decomposer.requires_covariance else None,
                generator=generator(bundle.seed, self.name, t),
            )
            out[t] = f.S if spectra_only else f
        return out

    def _weighted_svd(
        self, w: torch.Tensor, cov: torch.Tensor, spectra_only: bool
    ) -> Factorization | torch.Tensor:
        """``W M = U diag(S) Vh`` in ``precision``, ``Vh M^-1`` in float64 (the
        decomposer's weighting, :class:`CovarianceWeightedSVD`)."""
        assert isinstance(self.decomposer, CovarianceWeightedSVD)
        weigh, unweigh = self.decomposer.weighting(
            covariance_for(self.decomposer.name, w, cov)
        )
        wide = self.precision == "float64" or w.dtype == torch.float64
        dtype = torch.float64 if wide else torch.float32
        wm = weigh(w.to(torch.float64)).to(dtype)
        if spectra_only:
            return torch.linalg.svdvals(wm)
        U, S, Vh = torch.linalg.svd(wm, full_matrices=False)
        return Factorization(U, S, unweigh(Vh.to(torch.float64)).to(dtype), orthonormal=False)

    def _gram(
        self, w: torch.Tensor, cov: torch.Tensor, spectra_only: bool
    ) -> GramFactors | torch.Tensor:
        """The Gram route: spectrum of ``W M`` from the float64 Gram matrix of its
        smaller side, and (unless ``spectra_only``) its :class:`GramFactors`."""
        assert isinstance(self.decomposer, CovarianceWeightedSVD)
        w64 = w.to(torch.float64)
        wm = self.decomposer.weigh(covariance_for(self.decomposer.name, w, cov))(w64)
        tall = wm.shape[0] > wm.shape[1]
        gram = wm.transpose(0, 1) @ wm if tall else wm @ wm.transpose(0, 1)
        if spectra_only:
            return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0).sqrt()
        lam, vectors = torch.linalg.eigh(gram)
        return GramFactors(
            w=w64,
            weighted=wm,
            vectors=vectors.flip(1),
            S=lam.flip(0).clamp_min(0.0).sqrt(),
            tall=tall,
            dtype=w.dtype,
        )

    # ---------------------------------------------------------------- two-pass API
    def prepare(self, bundles: Iterable[LayerBundle]) -> RankAllocation | None:
        """Algorithm 1 over every purifiable tensor: per-layer ranks and per-task ratios."""
        return self.prepare_reduce([self.prepare_map(bundles)])

    def prepare_map(
        self, bundles: Iterable[LayerBundle]
    ) -> tuple[dict[str, int], dict[str, dict[str, int]]] | None:
        """Split prepass, map: the per-layer ranks of a run of tensors (``R^l`` and
        ``r_i^l`` per layer; Algorithm 1 allocates each layer on its own)."""
        if self.allocation != "spectral":
            return None
        full_ranks: dict[str, int] = {}
        ranks: dict[str, dict[str, int]] = {}
        for bundle in bundles:
            if self.pass_through_reason(bundle) is not None:
                continue
            spectra = self._spectra(bundle)
            tasks = [bundle.task_names[t] for t in spectra]
            layer = allocate_layer(list(spectra.values()), self.rho)
            full_ranks[bundle.name] = int(next(iter(spectra.values())).shape[0])
            ranks[bundle.name] = dict(zip(tasks, layer))
        return full_ranks, ranks

    def prepare_reduce(self, partials: Iterable[Any]) -> RankAllocation | None:
        """Split prepass, reduce: the layers of every run, in plan order (integers only,
        so any cut gives the same allocation)."""
        if self.allocation != "spectral":
            for _ in partials:  # drain the executor's results
                pass
            return None
        full_ranks: dict[str, int] = {}
        ranks: dict[str, dict[str, int]] = {}
        for part in partials:
            full_ranks.update(part[0])
            ranks.update(part[1])
        return RankAllocation(float(self.rho), full_ranks, ranks)

    def preprocess(self, bundle: LayerBundle, state: Any = None) -> LayerBundle:
        reason = self.pass_through_reason(bundle)
        if reason is not None:
            return bundle.with_record(
                Record(self.name, {"action": "passed_through", "reason": reason})
            )
        axis = bundle.input_axis
        facts = self._factorizations(bundle)
        full = facts[next(iter(facts))].rank
        ranks, info, summary = self._ranks(bundle, facts, state)
        base = as_working(linear_layout(bundle.base, axis))
        out: list[torch.Tensor] = []
        per_task: dict[str, Any] = {}
        for t, (task, tv) in enumerate(zip(bundle.task_names, bundle.task_vectors)):
            if t not in facts:
                out.append(tv)
                per_task[task] = {"action": "plain", "reason": "no input covariance for this task"}
                continue
            f, r = facts[t], ranks[task]
            purified = f.reconstruct(r).to(base.dtype) - base
            out.append(from_linear_layout(purified, axis).to(tv.dtype))
            energy = f.S.to(torch.float64).square()
            total = float(energy.sum())
            per_task[task] = {
                "action": "purified",
                "rank": r,
                **info.get(task, {}),
                "normalized_tail_energy": normalized_tail_energy(normalized_spectrum(f.S), r),
                "tail_energy_fraction": float(energy[r:].sum()) / total if total > 0 else 0.0,
            }
        data = {
            "action": "purified",
            "decomposer": self.decomposer.name,
            "allocation": self.allocation,
            "R": full,
            **({} if self.allocation == "uniform" else {"output": self.allocation_output}),
            **summary,
            "tasks": per_task,
        }
        return bundle.with_task_vectors(out, record=Record(self.name, data))

    def _ranks(
        self, bundle: LayerBundle, facts: dict[int, Factorization | GramFactors], state: Any
    ) -> tuple[dict[str, int], dict[str, dict[str, Any]], dict[str, Any]]:
        """Rank per purified task, per-task report data, tensor-level report data."""
        full = facts[next(iter(facts))].rank
        tasks = [bundle.task_names[t] for t in facts]
        if self.allocation == "uniform":
            r = max(1, round(full * self.rho))
            return {task: r for task in tasks}, {}, {"rho": self.rho}
        summary: dict[str, Any] = {"rho": self.rho, "gamma": stopping_ratio(self.rho)}
        planned = state.ranks.get(bundle.name, {}) if isinstance(state, RankAllocation) else {}
        if planned and set(planned) == set(tasks):
            layer = dict(planned)
            ratios = state.ratios
            summary["scope"] = "model"
        else:
            why = "no prepass state" if state is None else "tensor not in the prepass state"
            layer = dict(zip(tasks, allocate_layer([facts[t].S for t in facts], self.rho)))
            ratios = {task: r / full for task, r in layer.items()}
            summary["scope"] = "tensor"
            summary["scope_reason"] = f"{why}: allocated from this tensor alone"
        if self.allocation_output == "per_layer":
            ranks = dict(layer)
        else:
            ranks = {task: max(1, round(full * ratios[task])) for task in tasks}
        info = {task: {"layer_rank": layer[task], "rho_i": ratios[task]} for task in tasks}
        return ranks, info, summary


@hookimpl
def pactframe_register_preprocessors() -> list[type[Preprocessor]]:
    return [PAVEPurifier]
