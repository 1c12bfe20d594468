"""TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., NeurIPS 2023)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import attrs
import torch

from pactframe import LayerBundle, MergedTensor, Merger, Record, hookimpl, param
from pactframe.errors import InputError
from pactframe.validation import one_of, real
from pactframe_plugins.mergers._selection import kth_largest

#: magnitudes are binned by the top 20 bits of their float32 bit pattern (sign bit
#: excluded): 8 exponent bits and 12 mantissa bits, so a bin spans a relative
#: width of at most 2^-12 ~= 2.4e-4. Non-negative float32 bit patterns sort like
#: the values, so bins are ordered by magnitude.
_DROPPED_MANTISSA_BITS = 11
HISTOGRAM_BINS = 1 << (31 - _DROPPED_MANTISSA_BITS)


def keep_count(keep_fraction: float, total: int) -> int:
    """``ceil(keep_fraction * total)``, computed exactly on the decimal value given.

    Binary rounding would otherwise add one: ``0.07 * 100`` is
    ``7.000000000000001`` in floating point, so ``math.ceil`` of the float product
    keeps 8, while 7% of 100 entries is 7 (and so is this function's result)."""
    return math.ceil(Fraction(repr(float(keep_fraction))) * total)


def top_magnitude_mask(
    values: torch.Tensor, keep_fraction: float, *, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of the ``keep_count(keep_fraction, numel)`` largest ``|values|``
    (entries tied with the smallest kept magnitude are kept too).

    The threshold is the exact ``n_keep``-th largest magnitude
    (:func:`~pactframe_plugins.mergers._selection.kth_largest`, equal to
    ``torch.kthvalue(|values|, numel - n_keep + 1)``). ``scratch`` (contiguous,
    the shape and dtype of ``values``) receives the magnitudes, saving one tensor."""
    total = values.numel()
    n_keep = keep_count(keep_fraction, total)
    if n_keep >= total:
        return torch.ones_like(values, dtype=torch.bool)
    magnitudes = torch.abs(values, out=scratch) if scratch is not None else values.abs()
    threshold = kth_largest(magnitudes.reshape(-1), n_keep)
    return magnitudes >= threshold


def magnitude_bins(values: torch.Tensor) -> torch.Tensor:
    """Histogram bin (int64 in ``[0, HISTOGRAM_BINS)``) of each ``|value|``."""
    bits = values.detach().abs().to(torch.float32).contiguous().view(torch.int32)
    return (bits >> _DROPPED_MANTISSA_BITS).to(torch.int64)


def elect_signs(
    task_vectors: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor],
    *,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """TIES "elect": ``sign(sum_t trimmed_t)`` per entry (sign of the total mass),
    ``trimmed_t = where(keep_t, Delta_t, 0)``; entries whose sum is exactly zero
    take the majority sign ``sign(sum of the elected signs)`` of the tensor, as the
    authors' ``resolve_zero_signs``. ``T`` task vectors and trim masks of one shape
    in, that shape out, values in {-1, 0, 1} (0 only if the majority itself is a tie).

    The sum is accumulated in place in task order (no ``(T, *shape)`` stack);
    ``scratch`` (contiguous, same shape and dtype) holds each trimmed task in turn."""
    zero = task_vectors[0].new_zeros(())
    elected = torch.where(keeps[0], task_vectors[0], zero).contiguous()
    scratch = torch.empty_like(elected) if scratch is None else scratch
    for tv, keep in zip(task_vectors[1:], keeps[1:]):
        elected.add_(torch.where(keep, tv, zero, out=scratch))
    elected.sign_()
    majority = torch.sign(elected.sum())
    return elected.masked_fill_(elected == 0, majority)


def disjoint_merge(
    task_vectors: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor],
    elected: torch.Tensor,
    mode: str,
    *,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keep each task's trimmed entries whose sign equals the elected sign; ``"sum"``
    adds them, ``"mean"`` divides by how many tasks contributed (at least 1).

    Task ``t`` agrees at an entry when it survived the trim, is nonzero and has
    the elected sign, i.e. ``keep_t & (Delta_t * gamma > 0)`` (``gamma`` in
    {-1, 0, 1}; NaN never agrees). Tasks are visited one at a time, through
    ``scratch`` (contiguous, the shape and dtype of ``elected``)."""
    scratch = torch.empty_like(elected) if scratch is None else scratch
    zero = elected.new_zeros(())
    total: torch.Tensor | None = None
    count: torch.Tensor | None = None  # agreeing tasks per entry, integer
    count_dtype = torch.uint8 if len(task_vectors) < 256 else torch.int32
    for tv, keep in zip(task_vectors, keeps):
        agree = torch.mul(tv, elected, out=scratch).gt(0).logical_and_(keep)
        if total is None:  # the first task's terms start the sums (no zero-filled buffers)
            total = torch.where(agree, tv, zero).contiguous()
            count = agree.to(count_dtype) if mode == "mean" else None
            continue
        total.add_(torch.where(agree, tv, zero, out=scratch))
        if count is not None:
            count.add_(agree.view(torch.uint8).to(count_dtype))
    assert total is not None
    if count is None:
        return total
    return total.div_(count.clamp_(min=1).to(total.dtype))


@attrs.frozen
class GlobalTrimState:
    """Per-task magnitude thresholds over the whole model (TIES ``trim_scope="global"``).

    ``boundary_bins[t]``: entries of task ``t`` whose magnitude bin
    (:func:`magnitude_bins`) is at least this survive the trim. ``targets[t]`` is
    ``ceil(k D_t)``, ``kept[t]`` how many entries the bin boundary actually keeps
    (``kept >= target``; the excess lies in the boundary bin), ``totals[t] = D_t``.
    """

    task_names: tuple[str, ...]
    boundary_bins: tuple[int, ...]
    targets: tuple[int, ...]
    kept: tuple[int, ...]
    totals: tuple[int, ...]


@attrs.frozen
class TIES(Merger[GlobalTrimState]):
    """TIES-Merging: trim each task to its top-k% magnitudes, elect a sign per entry
    by mass, merge only the agreeing entries (mean or sum).

    Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
    NeurIPS 2023, Sec. 3 / Algorithm 1; authors' code ``prateeky2806/ties-merging``
    ``src/utils/merge_utils.py`` (``topk_values_mask``, ``resolve_sign``,
    ``disjoint_merge``). With ``Delta_t`` of any shape (flattened for the trim):

    1. trim: ``hat_t = Delta_t * [|Delta_t| >= kth_t]`` keeping the ``ceil(k D)``
       largest magnitudes (ties at the threshold kept), ``k = keep_fraction``;
    2. elect: ``gamma = sign(sum_t hat_t)``; entries with zero sum take the
       majority sign of the tensor;
    3. disjoint merge: ``A = {t : sign(hat_t) = gamma, hat_t != 0}``;
       ``"mean"``: ``tau = sum_{t in A} hat_t / max(|A|, 1)``; ``"sum"``: no division;
    4. ``delta = lambda * tau`` (``scaling`` is the paper's ``lambda``).

    Scaling convention: MEAN over agreeing tasks for ``disjoint="mean"`` (paper,
    lambda grid 0.8..2.5, our default 1.0), SUM for ``disjoint="sum"`` (the ViT
    scripts and FusionBench, lambda 0.3). The optimal lambda differs by about T.

    Trim scope. ``"tensor"`` (default) trims each tensor on its own, so the merge
    streams. ``"global"`` ranks each task's magnitudes over ALL tensors, as the
    authors' code (which flattens the model): :meth:`prepare` streams every bundle
    once and keeps, per task, a histogram of ``HISTOGRAM_BINS = 2^20`` int64
    counts (8 MiB per task) over the float32 bit pattern of ``|Delta|``; the
    threshold is the lower edge of the bin holding the ``ceil(k D)``-th largest
    magnitude. It keeps at least ``ceil(k D)`` entries; the excess is the entries
    in that one bin (relative width <= 2^-12), reported in the state. Cost: one
    extra read of every tensor, ``O(D)`` time. Without a state (one tensor merged
    alone) the global scope is that tensor's exact per-tensor trim.

    Deviations from the authors' code (documented choices): we keep
    ``ceil(k D)`` entries where ``topk_values_mask`` keeps ``int(k D) + 1``
    (they agree unless ``k D`` is an integer) and accept ``k = 1``, which the
    original cannot; the zero-sum majority sign is taken per tensor (the original
    takes it over the flattened model; it only decides entries whose trimmed values
    cancel exactly); if that majority is itself a tie the entry is 0 rather than
    taking the negative entries.

    Knob mapping: ``keep_fraction`` = mergekit ``density`` = FusionBench
    ``threshold / 100`` (default 20 -> 0.2) = the code's ``topk20`` = 1 -
    MergeLM ``param_value_mask_rate``. Shapes: any floating tensor.

    Per-model weights (``models[].weight``, as mergekit's ``ties``): the trim is
    unchanged, then steps 2-3 use ``w_t hat_t``: ``gamma = sign(sum_t w_t hat_t)``,
    ``A`` is where ``sign(w_t hat_t) = gamma``, and ``"mean"`` gives
    ``sum_{t in A} w_t hat_t / sum_{t in A} w_t`` (1 where that sum is 0),
    ``"sum"`` gives ``sum_{t in A} w_t hat_t``. All ``w_t = 1`` is the plain method.
    """

    name: ClassVar[str] = "ties"
    accepts_weights: ClassVar[bool] = True
    linear_scaling: ClassVar[str | None] = "scaling"

    scaling: float = param(
        1.0, validator=real(), help="lambda multiplying the merged vector (see 'disjoint')"
    )
    keep_fraction: float = param(
        0.2,
        validator=real(0.0, 1.0, closed="right"),
        help="fraction k of each task's entries kept by magnitude (top-k%); mergekit "
        "'density', FusionBench 'threshold'/100",
    )
    disjoint: str = param(
        "mean",
        validator=one_of(("mean", "sum")),
        help="'mean' divides by the number of agreeing tasks (paper), 'sum' adds them "
        "(ViT scripts, FusionBench)",
    )
    trim_scope: str = param(
        "tensor",
        validator=one_of(("tensor", "global")),
        help="'tensor' trims each tensor alone (streams); 'global' ranks magnitudes over "
        "the whole model (needs a prepass over all tensors)",
    )

    @property
    def needs_prepass(self) -> bool:
        """Only the global trim needs whole-model statistics."""
        return self.trim_scope == "global"

    def prepare(self, bundles: Iterable[LayerBundle]) -> GlobalTrimState | None:
        """One streaming pass: per-task magnitude histograms -> global thresholds."""
        return self.prepare_reduce([self.prepare_map(bundles)])

    def prepare_map(
        self, bundles: Iterable[LayerBundle]
    ) -> tuple[tuple[str, ...], list[torch.Tensor]] | None:
        """Split prepass, map: the per-task magnitude histograms of a run of tensors
        (``(task names, counts)``; ``((), [])`` for a run with no floating tensor)."""
        if self.trim_scope != "global":
            return None
        task_names: tuple[str, ...] | None = None
        counts: list[torch.Tensor] = []
        for bundle in bundles:
            if self.supports(bundle) is not None:
                continue
            if task_names is None:
                task_names = bundle.task_names
                counts = [torch.zeros(HISTOGRAM_BINS, dtype=torch.int64) for _ in task_names]
            elif bundle.task_names != task_names:
                raise InputError(
                    f"TIES global trim: tensor {bundle.name!r} has tasks {list(bundle.task_names)}"
                    f" but earlier tensors had {list(task_names)}; every tensor must list the "
                    "same tasks in the same order."
                )
            for t, tv in enumerate(bundle.task_vectors):
                entry_bins = magnitude_bins(tv).flatten().cpu()
                counts[t].index_add_(0, entry_bins, torch.ones_like(entry_bins))
        return (task_names or (), counts)

    def prepare_reduce(self, partials: Iterable[Any]) -> GlobalTrimState | None:
        """Split prepass, reduce: histograms added (integer counts: any cut gives the same
        sums), then the thresholds."""
        if self.trim_scope != "global":
            for _ in partials:  # drain the executor's results
                pass
            return None
        task_names: tuple[str, ...] | None = None
        counts: list[torch.Tensor] = []
        for names, part in partials:
            if not names:
                continue
            if task_names is None:
                task_names, counts = names, part
            elif names != task_names:
                raise InputError(
                    f"TIES global trim: a run of tensors has tasks {list(names)} but earlier "
                    f"tensors had {list(task_names)}; every tensor must list the same tasks "
                    "in the same order."
                )
            else:
                for acc, c in zip(counts, part):
                    acc.add_(c)
        if task_names is None:
            return GlobalTrimState((), (), (), (), ())
        bins: list[int] = []
        targets: list[int] = []
        kept: list[int] = []
        totals: list[int] = []
        for count in counts:
            total = int(count.sum())
            target = keep_count(self.keep_fraction, total)
            at_or_above = count.flip(0).cumsum(0).flip(0)  # entries in bins >= b
            boundary = int((at_or_above >= target).nonzero().max()) if target > 0 else 0
            bins.append(boundary)
            targets.append(target)
            kept.append(int(at_or_above[boundary]))
            totals.append(total)
        return GlobalTrimState(task_names, tuple(bins), tuple(targets), tuple(kept), tuple(totals))

    def _trim_masks(
        self, bundle: LayerBundle, state: Any, scratch: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        if self.trim_scope == "global" and state is not None:
            if not isinstance(state, GlobalTrimState) or state.task_names != bundle.task_names:
                got = getattr(state, "task_names", type(state).__name__)
                raise InputError(
                    f"TIES global trim of tensor {bundle.name!r}: the prepared state is for "
                    f"tasks {got!r}, the bundle has {list(bundle.task_names)}. Call prepare() "
                    "on the same bundles before merging."
                )
            return [
                magnitude_bins(tv) >= boundary
                for tv, boundary in zip(bundle.task_vectors, state.boundary_bins)
            ]
        return [
            top_magnitude_mask(tv, self.keep_fraction, scratch=scratch)
            for tv in bundle.task_vectors
        ]

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        tvs = bundle.task_vectors
        scratch = torch.empty(tvs[0].shape, dtype=tvs[0].dtype, device=tvs[0].device)
        keeps = self._trim_masks(bundle, state, scratch)
        if bundle.task_weights is not None:
            merged = self._weighted_merge(tvs, keeps, bundle.weights, scratch)
        else:
            elected = elect_signs(tvs, keeps, scratch=scratch)
            merged = disjoint_merge(tvs, keeps, elected, self.disjoint, scratch=scratch)
        kept = [round(int(torch.count_nonzero(m)) / max(m.numel(), 1), 6) for m in keeps]
        record = Record(self.name, {"trim_scope": self.trim_scope, "kept_fraction": kept})
        return MergedTensor(merged.mul_(self.scaling), records=(record,))

    def _weighted_merge(
        self,
        tvs: Sequence[torch.Tensor],
        keeps: Sequence[torch.Tensor],
        weights: Sequence[float],
        scratch: torch.Tensor,
    ) -> torch.Tensor:
        """Elect and disjoint-merge on the weighted trimmed vectors ``w_t hat_t``."""
        weighted = [tv * w for tv, w in zip(tvs, weights)]
        elected = elect_signs(weighted, keeps, scratch=scratch)
        zero = elected.new_zeros(())
        total = torch.zeros_like(elected)
        divisor = torch.zeros_like(elected)
        for wtv, keep, w in zip(weighted, keeps, weights):
            agree = torch.mul(wtv, elected, out=scratch).gt(0).logical_and_(keep)
            total.add_(torch.where(agree, wtv, zero))
            divisor.add_(agree.to(divisor.dtype), alpha=w)
        if self.disjoint == "sum":
            return total
        return total.div_(divisor.masked_fill_(divisor == 0, 1.0))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [TIES]
