"""Value types exchanged between components.

Shapes follow PyTorch's ``nn.Linear`` layout: a weight is ``W`` of shape
``(d_out, d_in)`` and acts as ``y = W x``; right singular vectors live in input
space ``R^{d_in}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from pactframe.errors import InputError
from pactframe.linalg import as_working, numerical_rank, rank_rtol

Tensor = torch.Tensor


def _tensor_tuple(value: Sequence[Tensor | LowRank]) -> tuple[Tensor | LowRank, ...]:
    return tuple(value)


def _str_tuple(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(value)


def _record_tuple(value: Sequence[Record]) -> tuple[Record, ...]:
    return tuple(value)


def _optional_tuple(value: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(eq=False)
class Factorization:
    """A (possibly truncated) factorization ``A ~= U diag(S) Vh``.

    Shapes: ``U`` is ``(m, r)``, ``S`` is ``(r,)`` sorted descending, ``Vh`` is
    ``(r, n)``. For a plain SVD both ``U`` and ``Vh`` have orthonormal
    columns/rows (``orthonormal=True``). Context-aware decompositions such as
    CO-SVD map their right factor back through ``C^-1``; then ``Vh`` is not
    orthonormal and ``S`` are the singular values of the *activated* matrix
    ``A C`` (``orthonormal=False``).
    """

    U: Tensor
    S: Tensor
    Vh: Tensor
    orthonormal: bool = True

    def __attrs_post_init__(self) -> None:
        if self.U.ndim != 2 or self.S.ndim != 1 or self.Vh.ndim != 2:
            raise InputError(
                "Factorization needs U (m, r), S (r,), Vh (r, n); got shapes "
                f"{tuple(self.U.shape)}, {tuple(self.S.shape)}, {tuple(self.Vh.shape)}."
            )
        r = self.S.shape[0]
        if self.U.shape[1] != r or self.Vh.shape[0] != r:
            raise InputError(
                "Factorization factors disagree on the rank: U has "
                f"{self.U.shape[1]} columns, S has {r} values, Vh has {self.Vh.shape[0]} rows."
            )

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.U.shape[0]), int(self.Vh.shape[1]))

    def truncate(self, rank: int) -> Factorization:
        """The leading ``rank`` components (``rank`` is clipped to the available rank)."""
        r = max(0, min(int(rank), self.rank))
        return Factorization(self.U[:, :r], self.S[:r], self.Vh[:r], self.orthonormal)

    def reconstruct(self, rank: int | None = None) -> Tensor:
        """``U_r diag(S_r) Vh_r``, shape ``(m, n)``."""
        f = self if rank is None else self.truncate(rank)
        return (f.U * f.S.unsqueeze(0)) @ f.Vh

    def right_basis(self, rank: int | None = None) -> Tensor:
        """Orthonormal basis ``V_r`` (``(n, r)``) of the top right singular subspace."""
        if not self.orthonormal:
            raise InputError(
                "right_basis() needs an orthonormal factorization; this one maps its right "
                "factor through a covariance inverse. Use exact_svd or randomized_svd."
            )
        f = self if rank is None else self.truncate(rank)
        return f.Vh.transpose(0, 1)

    def left_basis(self, rank: int | None = None) -> Tensor:
        """Orthonormal basis ``U_r`` (``(m, r)``) of the top left singular subspace."""
        f = self if rank is None else self.truncate(rank)
        return f.U


@attrs.frozen(eq=False)
class LowRank:
    """A task vector kept as two factors: ``Delta = B @ A``.

    ``B`` is ``(m, r)`` and ``A`` is ``(r, n)``, so ``Delta`` has the weight's
    shape ``(m, n)`` and rank at most ``r``. A LoRA adapter's task vector
    (Hu et al., 2021, eq. 3: ``W = W_0 + (alpha / r) B A``) arrives this way,
    with the scale already folded into ``B`` (see docs/lora.md).

    :meth:`svd` is exact, not an approximation: with ``B = Q_B R_B`` and
    ``A^T = Q_A R_A`` (thin QR), ``B A = Q_B (R_B R_A^T) Q_A^T``, and the
    ``r x r`` core's SVD ``U_c S V_c^T`` gives ``Delta = (Q_B U_c) S (Q_A V_c)^T``
    in ``O((m + n) r^2)`` instead of ``O(m n min(m, n))``.
    """

    B: Tensor
    A: Tensor

    def __attrs_post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise InputError(
                "LowRank needs B (m, r) and A (r, n); got shapes "
                f"{tuple(self.B.shape)} and {tuple(self.A.shape)}."
            )

    @property
    def shape(self) -> torch.Size:
        return torch.Size((int(self.B.shape[0]), int(self.A.shape[1])))

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.B.dtype

    @property
    def device(self) -> torch.device:
        return self.B.device

    def materialize(self) -> Tensor:
        """The dense ``(m, n)`` matrix ``B @ A`` (on the factors' device and dtype)."""
        return self.B @ self.A

    def map(self, fn: Any) -> LowRank:
        """Apply ``fn`` (a device move or cast) to both factors."""
        return LowRank(fn(self.B), fn(self.A))

    def squared_norm(self) -> float:
        """``||B A||_F^2 = sum((B^T B) * (A A^T))``, without forming ``B A``."""
        B, A = as_working(self.B), as_working(self.A)
        return float(((B.transpose(0, 1) @ B) * (A @ A.transpose(0, 1))).sum().clamp_min(0.0))

    def transpose(self) -> LowRank:
        """``Delta^T = A^T B^T`` as factors."""
        return LowRank(self.A.transpose(0, 1), self.B.transpose(0, 1))

    def svd(self, rank: int | None = None) -> Factorization:
        """The exact thin SVD of ``B @ A`` from its factors (QR of both, ``r x r`` SVD),
        truncated to ``rank``; at most ``r`` components (zero singular values beyond
        the factors' rank are not listed)."""
        B, A = as_working(self.B), as_working(self.A)
        Qb, Rb = torch.linalg.qr(B)
        Qa, Ra = torch.linalg.qr(A.transpose(0, 1))
        Uc, S, Vch = torch.linalg.svd(Rb @ Ra.transpose(0, 1), full_matrices=False)
        f = Factorization(Qb @ Uc, S, Vch @ Qa.transpose(0, 1))
        return f if rank is None else f.truncate(rank)

    def truncated_svd(self, rtol: float | None = None, scale: float | None = None) -> Factorization:
        """Rank-revealing :meth:`svd`: only the singular values ``sigma > rtol * scale``,
        with ``rtol`` defaulting to :func:`~pactframe.linalg.rank_rtol` of the DENSE
        shape ``(m, n)`` and ``scale`` to ``sigma_max``, exactly the rule of
        :func:`pactframe.linalg.truncated_svd` on ``B @ A``. So both give the same
        numerical rank and the same kept triplets (up to the sign of each pair),
        and the singular vectors of zero singular values (arbitrary) are never listed."""
        f = self.svd()
        tol = rank_rtol(self.shape, f.S.dtype) if rtol is None else rtol
        return f.truncate(numerical_rank(f.S, tol, scale))


@attrs.frozen
class Record:
    """One piece of report data a component attached to a tensor.

    ``source`` names the component (``"pact"``, ``"pave"``...); ``data`` is a
    JSON-serialisable mapping (numbers, strings, lists) the pipeline copies
    into the merge report.
    """

    source: str
    data: Mapping[str, Any]


@attrs.frozen(eq=False)
class LayerBundle:
    """Everything a preprocessor or merger sees for one tensor name.

    Attributes:
        name: the state-dict key, e.g. ``"encoder.layer.0.attention.self.query.weight"``.
        base: the pre-trained tensor ``theta_0[name]``, any shape.
        task_vectors: ``T`` tensors ``Delta_t = theta_t[name] - theta_0[name]``,
            each shaped like ``base``. An entry given as a :class:`LowRank`
            (a LoRA adapter's ``B A``) is *factored*: reading ``task_vectors``
            materialises it (once per bundle, on its device), while
            :attr:`factored_task_vectors` hands the factors to components that
            can use them (see docs/plugin-guide.md, "Factored task vectors").
        task_names: ``T`` distinct task names, in the same order.
        covariances: ``None`` or ``T`` entries, each ``None`` or a ``(d_in, d_in)``
            input covariance collected on task ``t`` (PAVE, CO-SVD).
        seed: the tensor-level seed, derived from the run seed and ``name``
            (see :func:`pactframe.seeding.derive_seed`).
        records: report data attached so far by preprocessors.
        input_axis: which axis of a 2-D weight is its input side: ``1`` for the
            ``nn.Linear`` layout ``(d_out, d_in)`` (default), ``0`` for transposed
            layouts such as GPT-2's ``Conv1D`` ``(d_in, d_out)``. Covariances are
            always ``(d_in, d_in)``; the pipeline sets this from the covariance
            file's layout metadata.
        task_weights: ``None`` (every model weighs 1) or ``T`` per-model weights
            from the config's ``models[].weight``; only mergers with
            ``accepts_weights`` are ever given weights (see docs/config.md).
    """

    name: str
    base: Tensor
    _task_vectors: tuple[Tensor | LowRank, ...] = attrs.field(
        converter=_tensor_tuple, alias="task_vectors"
    )
    task_names: tuple[str, ...] = attrs.field(converter=_str_tuple)
    covariances: tuple[Tensor | None, ...] | None = attrs.field(
        default=None, converter=_optional_tuple
    )
    seed: int = 0
    records: tuple[Record, ...] = attrs.field(default=(), converter=_record_tuple)
    input_axis: int = 1
    task_weights: tuple[float, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    _dense: dict[int, Tensor] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.task_weights is not None and len(self.task_weights) != len(self._task_vectors):
            raise InputError(
                f"Tensor {self.name!r}: {len(self.task_weights)} task weights for "
                f"{len(self.task_vectors)} task vectors."
            )
        if self.input_axis not in (0, 1):
            raise InputError(
                f"Tensor {self.name!r}: input_axis must be 0 or 1; got {self.input_axis!r}."
            )
        T = len(self._task_vectors)
        if T == 0:
            raise InputError(f"Tensor {self.name!r}: a LayerBundle needs at least one task vector.")
        if len(self.task_names) != T:
            raise InputError(
                f"Tensor {self.name!r}: {T} task vectors but {len(self.task_names)} task names."
            )
        if len(set(self.task_names)) != T:
            raise InputError(f"Tensor {self.name!r}: task names repeat: {list(self.task_names)}.")
        for task, tv in zip(self.task_names, self._task_vectors):
            if tuple(tv.shape) != tuple(self.base.shape):
                raise InputError(
                    f"Tensor {self.name!r}: task {task!r} has shape {tuple(tv.shape)} but the "
                    f"base has {tuple(self.base.shape)}; all checkpoints must share the layout."
                )
        if self.covariances is not None and len(self.covariances) != T:
            raise InputError(
                f"Tensor {self.name!r}: {len(self.covariances)} covariance entries for {T} tasks."
            )

    @property
    def task_vectors(self) -> tuple[Tensor, ...]:
        """The ``T`` dense task vectors; factored entries are materialised (and kept)."""
        out = []
        for t, tv in enumerate(self._task_vectors):
            if isinstance(tv, LowRank):
                if t not in self._dense:
                    self._dense[t] = tv.materialize()
                out.append(self._dense[t])
            else:
                out.append(tv)
        return tuple(out)

    @property
    def factored_task_vectors(self) -> tuple[LowRank | None, ...]:
        """Per task, its :class:`LowRank` factors, or ``None`` for a dense task vector."""
        return tuple(tv if isinstance(tv, LowRank) else None for tv in self._task_vectors)

    @property
    def is_factored(self) -> bool:
        """True when at least one task vector is held as factors."""
        return any(isinstance(tv, LowRank) for tv in self._task_vectors)

    def materialized(self) -> LayerBundle:
        """This bundle with every task vector dense (itself when none is factored)."""
        if not self.is_factored:
            return self
        return attrs.evolve(self, task_vectors=self.task_vectors)

    @property
    def num_tasks(self) -> int:
        return len(self._task_vectors)

    @property
    def is_matrix(self) -> bool:
        """True for 2-D tensors with at least two rows and two columns."""
        return self.base.ndim == 2 and min(self.base.shape) >= 2

    def finetuned(self, t: int) -> Tensor:
        """``theta_t = theta_0 + Delta_t`` for task index ``t``."""
        return self.base + self.task_vectors[t]

    @property
    def weights(self) -> tuple[float, ...]:
        """The per-model weights, ``1.0`` each when the config gives none."""
        if self.task_weights is None:
            return (1.0,) * len(self.task_vectors)
        return tuple(float(w) for w in self.task_weights)

    def covariance(self, t: int) -> Tensor | None:
        return None if self.covariances is None else self.covariances[t]

    def with_task_vectors(
        self, task_vectors: Sequence[Tensor | LowRank], *, record: Record | None = None
    ) -> LayerBundle:
        """A copy with new task vectors (dense or :class:`LowRank`), optionally
        appending a report record."""
        records = self.records if record is None else (*self.records, record)
        return attrs.evolve(self, task_vectors=tuple(task_vectors), records=records)

    def with_record(self, record: Record) -> LayerBundle:
        out = attrs.evolve(self, records=(*self.records, record))
        out._dense.update(self._dense)  # same task vectors: keep what was materialised
        return out

    def map_tensors(self, fn: Any) -> LayerBundle:
        """Apply ``fn`` to base, task vectors and covariances (device moves, casts)."""
        covs = None
        if self.covariances is not None:
            covs = tuple(None if c is None else fn(c) for c in self.covariances)
        return attrs.evolve(
            self,
            base=fn(self.base),
            task_vectors=tuple(
                t.map(fn) if isinstance(t, LowRank) else fn(t) for t in self._task_vectors
            ),
            covariances=covs,
        )


@attrs.frozen(eq=False)
class MergedTensor:
    """What a merger returns for one tensor.

    ``delta`` is the merged task vector, already scaled, so the merged weight is
    ``base + delta``. A task-conditioned merge (EMR) also carries, per task, a
    boolean ``mask`` and a scalar ``scale``; task ``t``'s own weight is then
    ``base + scale_t * (mask_t * delta)`` (see :meth:`task_delta`), while the
    plain output ``base + delta`` is the shared (unified) model.
    """

    delta: Tensor
    task_names: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    task_masks: tuple[Tensor, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    task_scales: tuple[float, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    records: tuple[Record, ...] = attrs.field(default=(), converter=_record_tuple)

    def __attrs_post_init__(self) -> None:
        parts = (self.task_names, self.task_masks, self.task_scales)
        if any(p is not None for p in parts):
            if any(p is None for p in parts):
                raise InputError(
                    "A task-conditioned MergedTensor needs task_names, task_masks and "
                    "task_scales together."
                )
            assert self.task_names is not None and self.task_masks is not None
            assert self.task_scales is not None
            if not (len(self.task_names) == len(self.task_masks) == len(self.task_scales)):
                raise InputError("task_names, task_masks and task_scales differ in length.")
            for name, mask in zip(self.task_names, self.task_masks):
                if mask.shape != self.delta.shape:
                    raise InputError(
                        f"The mask of task {name!r} has shape {tuple(mask.shape)}; "
                        f"the merged delta has {tuple(self.delta.shape)}."
                    )

    @property
    def is_task_conditioned(self) -> bool:
        return self.task_masks is not None

    def task_delta(self, task: str | int) -> Tensor:
        """Task ``task``'s own delta; equals ``delta`` for a plain merge."""
        if not self.is_task_conditioned:
            return self.delta
        assert self.task_names is not None and self.task_masks is not None
        assert self.task_scales is not None
        if isinstance(task, str):
            if task not in self.task_names:
                raise InputError(f"Unknown task {task!r}; this merge has {list(self.task_names)}.")
            index = self.task_names.index(task)
        else:
            index = task
        mask = self.task_masks[index].to(self.delta.dtype)
        return self.task_scales[index] * (mask * self.delta)

    def apply(self, base: Tensor) -> Tensor:
        """The merged weight ``base + delta``, in ``base``'s dtype."""
        return (base.to(self.delta.dtype) + self.delta).to(base.dtype)
