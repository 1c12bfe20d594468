"""Weight averaging (model soup of fine-tuned models sharing one base)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from pactframe import LayerBundle, MergedTensor, Merger, hookimpl, param
from pactframe.validation import real
from pactframe_plugins.mergers._common import weight_total, weighted_task_sum


@attrs.frozen
class WeightAveraging(Merger):
    """Weight averaging: ``delta = scaling * (1/T) sum_t Delta_t`` (MEAN convention).

    Wortsman et al., "Model soups", ICML 2022 (uniform soup), written on task
    vectors: ``theta = (1/T) sum_t theta_t = theta_0 + (1/T) sum_t Delta_t``.
    It is Task Arithmetic (Ilharco et al., ICLR 2023) with ``lambda = 1/T``;
    ``scaling`` multiplies the mean (1.0 gives the plain average of the
    fine-tuned weights).

    Shapes: any floating tensor shape; the delta has the base's shape. It is
    also the default ``fallback`` of the SVD-based mergers for non-matrix
    tensors (the authors' ``mean_t Delta_t``).

    Per-model weights (``models[].weight``) give the weighted mean
    ``scaling * sum_t w_t Delta_t / sum_t w_t`` (Wortsman et al.'s soup with
    mixing coefficients); without weights every ``w_t = 1``.
    """

    name: ClassVar[str] = "average"
    accepts_weights: ClassVar[bool] = True
    linear_scaling: ClassVar[str | None] = "scaling"

    scaling: float = param(
        1.0, validator=real(), help="factor multiplying the MEAN of the task vectors"
    )

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        if bundle.task_weights is None:
            mean = weighted_task_sum(bundle).div_(len(bundle.task_vectors))
        else:
            mean = weighted_task_sum(bundle).div_(weight_total(bundle))
        return MergedTensor(mean.mul_(self.scaling))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [WeightAveraging]
