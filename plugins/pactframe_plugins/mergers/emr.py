"""EMR-Merging: Elect, Mask & Rescale (Huang et al., NeurIPS 2024)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import attrs
import torch

from pactframe import LayerBundle, MergedTensor, Merger, Record, hookimpl, param
from pactframe.errors import InputError
from pactframe.validation import real
from pactframe_plugins.mergers._common import stacked_task_vectors


def elect_mask_unify(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EMR's elect and mask steps on ``(T, *shape)`` task vectors.

    ``flag = +1 where sum_t Delta_t > 0 else -1`` (zero sums elect -1, as the
    authors' code); ``mask_t = Delta_t * flag > 0``;
    ``tau_uni = flag * max_t |mask_t * Delta_t|``. Returns ``(tau_uni, masks)``
    with shapes ``shape`` and ``(T, *shape)`` (bool).
    """
    flag = torch.where(stacked.sum(dim=0) > 0, 1.0, -1.0).to(stacked.dtype)
    masks = stacked * flag > 0
    magnitude = torch.where(masks, stacked.abs(), torch.zeros_like(stacked)).amax(dim=0)
    return flag * magnitude, masks


def _mean_abs(x: torch.Tensor) -> float:
    """``mean |x|`` accumulated in float64 (0 for an empty tensor)."""
    return float(torch.mean(x.abs(), dtype=torch.float64)) if x.numel() else 0.0


def rescaler_terms(stacked: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per task, this tensor's ``mean |Delta_t|`` and ``mean |tau_uni * mask_t|``."""
    tau_uni, masks = elect_mask_unify(stacked)
    numerators = [_mean_abs(tv) for tv in stacked]
    zeros = torch.zeros_like(tau_uni)
    denominators = [_mean_abs(torch.where(m, tau_uni, zeros)) for m in masks]
    return numerators, denominators


def rescalers(numerators: list[float], denominators: list[float]) -> tuple[float, ...]:
    """``lambda_t = numerator_t / denominator_t``; 1.0 where the denominator is 0 (the
    task's mask is empty on every tensor, so its delta is 0 whatever lambda_t is)."""
    return tuple(n / d if d > 0 else 1.0 for n, d in zip(numerators, denominators))


@attrs.frozen
class EMRState:
    """Whole-model rescalers: per task, sums over tensors of the per-tensor means."""

    task_names: tuple[str, ...]
    numerators: tuple[float, ...]
    denominators: tuple[float, ...]

    @property
    def scales(self) -> tuple[float, ...]:
        return rescalers(list(self.numerators), list(self.denominators))


@attrs.frozen
class EMR(Merger[EMRState]):
    """EMR-Merging: one unified task vector plus, per task, a sign mask and a rescaler.

    Huang et al., "EMR-Merging: Tuning-Free High-Performance Model Merging",
    NeurIPS 2024 (Sec. 3, Algorithm 1); authors' code ``harveyhuang18/EMR_Merging``
    ``merge_vit/src/main_emr_merging.py::emr_merge`` (same in FusionBench
    ``emr_merging/utils.py``). Per tensor ``k`` (any floating shape, biases and
    norms included, as the authors' code):

    - elect: ``flag_k = sign(sum_t Delta_t[k])`` with zero sums -> -1;
      ``tau_uni,k = flag_k * max_t |mask_t,k * Delta_t[k]|``;
    - mask: ``mask_t,k = (Delta_t[k] * flag_k > 0)``;
    - rescale: ``lambda_t = sum_k mean|Delta_t[k]| / sum_k mean|tau_uni,k * mask_t,k|``,
      a sum over ALL tensors of per-tensor MEANS (the code's rule; the paper's
      formula sums over all parameters, which weighs small tensors less).

    Result (task-conditioned :class:`~pactframe.MergedTensor`):
    ``delta = scaling * tau_uni``, ``task_masks = mask_t``, ``task_scales = lambda_t``;
    task ``t``'s model is ``theta_0 + lambda_t * mask_t * delta``
    (``MergedTensor.task_delta(t)``). The plain output ``theta_0 + delta`` is the
    unified model ``theta_0 + tau_uni``: it holds the elected signs with each
    entry's largest agreeing magnitude and is NOT meant to be used without a task's
    modulator. Scaling convention: none in the paper (each task is rescaled to its
    own magnitude); ``scaling`` (default 1.0) multiplies every task's delta.

    Because ``lambda_t`` is a whole-model quantity, ``needs_prepass`` is true:
    :meth:`prepare` streams every tensor once and keeps 2T floats. Merging a tensor
    without a state (one tensor alone) computes ``lambda_t`` from that tensor only.
    """

    name: ClassVar[str] = "emr"
    needs_prepass: ClassVar[bool] = True
    linear_scaling: ClassVar[str | None] = "scaling"

    scaling: float = param(
        1.0, validator=real(), help="factor multiplying the unified vector (paper: none, 1.0)"
    )

    def prepare(self, bundles: Iterable[LayerBundle]) -> EMRState:
        """Per task, accumulate ``sum_k mean|Delta_t[k]|`` and ``sum_k mean|tau_uni,k mask_t,k|``
        over every floating tensor (one streaming pass; 2T floats kept)."""
        return self.prepare_reduce([self.prepare_map(bundles)])

    def prepare_map(
        self, bundles: Iterable[LayerBundle]
    ) -> tuple[tuple[str, ...], list[tuple[list[float], list[float]]]]:
        """Split prepass, map: each floating tensor's own terms (2T floats per tensor, in
        order), so the float sums are formed once, in plan order, by :meth:`prepare_reduce`."""
        task_names: tuple[str, ...] = ()
        terms: list[tuple[list[float], list[float]]] = []
        for bundle in bundles:
            if self.supports(bundle) is not None:
                continue
            if not task_names:
                task_names = bundle.task_names
            elif bundle.task_names != task_names:
                raise InputError(
                    f"EMR prepass: tensor {bundle.name!r} has tasks {list(bundle.task_names)} "
                    f"but earlier tensors had {list(task_names)}; every tensor must list the "
                    "same tasks in the same order."
                )
            nums, dens = rescaler_terms(stacked_task_vectors(bundle))
            terms.append((list(nums), list(dens)))
        return task_names, terms

    def prepare_reduce(self, partials: Iterable[Any]) -> EMRState:
        """Split prepass, reduce: the per-tensor terms summed in plan order (the same
        additions, in the same order, as one streaming pass)."""
        task_names: tuple[str, ...] = ()
        numerators: list[float] = []
        denominators: list[float] = []
        for names, terms in partials:
            if not terms:
                continue
            if not task_names:
                task_names = names
                numerators = [0.0] * len(task_names)
                denominators = [0.0] * len(task_names)
            elif names != task_names:
                raise InputError(
                    f"EMR prepass: a run of tensors has tasks {list(names)} but earlier tensors "
                    f"had {list(task_names)}; every tensor must list the same tasks in the same "
                    "order."
                )
            for nums, dens in terms:
                numerators = [a + b for a, b in zip(numerators, nums)]
                denominators = [a + b for a, b in zip(denominators, dens)]
        return EMRState(task_names, tuple(numerators), tuple(denominators))

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        stacked = stacked_task_vectors(bundle)
        tau_uni, masks = elect_mask_unify(stacked)
        if state is None:
            scales = rescalers(*rescaler_terms(stacked))
            scope = "tensor"
        else:
            if not isinstance(state, EMRState) or state.task_names != bundle.task_names:
                got = getattr(state, "task_names", type(state).__name__)
                raise InputError(
                    f"EMR merge of tensor {bundle.name!r}: the prepared state is for tasks "
                    f"{got!r}, the bundle has {list(bundle.task_names)}. Call prepare() on the "
                    "same bundles before merging."
                )
            scales = state.scales
            scope = "model"
        record = Record(self.name, {"rescaler_scope": scope, "task_scales": list(scales)})
        return MergedTensor(
            self.scaling * tau_uni,
            task_names=bundle.task_names,
            task_masks=tuple(masks),
            task_scales=scales,
            records=(record,),
        )


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [EMR]
