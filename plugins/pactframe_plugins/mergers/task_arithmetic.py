"""Task Arithmetic (Ilharco et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from pactframe import LayerBundle, MergedTensor, Merger, hookimpl, param
from pactframe.validation import instance_of, real
from pactframe_plugins.mergers._common import weight_total, weighted_task_sum


@attrs.frozen
class TaskArithmetic(Merger):
    """Task Arithmetic: ``delta = lambda * sum_t Delta_t`` (SUM convention).

    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, Sec. 2:
    ``theta = theta_0 + lambda * sum_{t=1}^T tau_t`` with task vectors
    ``tau_t = theta_t - theta_0`` (authors' code ``mlfoundations/task_vectors``,
    ``TaskVector.apply_to``). ``scaling`` is the paper's ``lambda``.

    Shapes: any floating tensor shape (matrices, biases, norms, 0-D); the delta
    has the base's shape. Every float tensor is merged the same way, as in the
    authors' code; integer and boolean buffers are refused by :meth:`supports`.

    Default ``scaling = 0.3``: FusionBench's ``scaling_factor`` and the fixed
    value of the EMR/AdaMerging ViT scripts. The paper picks ``lambda`` on
    held-out validation data (grid 0..1); ``scaling = 1 / T`` is weight averaging.

    Per-model weights (``models[].weight``, mergekit's ``weight``): ``delta =
    lambda * sum_t w_t Delta_t``, divided by ``sum_t w_t`` when ``normalize`` is
    true (mergekit's ``task_arithmetic`` and ``dare_linear``, whose ``normalize``
    defaults to false as here). Without weights every ``w_t = 1``.
    """

    name: ClassVar[str] = "task_arithmetic"
    accepts_weights: ClassVar[bool] = True
    linear_scaling: ClassVar[str | None] = "scaling"

    scaling: float = param(
        0.3, validator=real(), help="lambda multiplying the SUM of the task vectors"
    )
    normalize: bool = param(
        False,
        validator=instance_of(bool, "a bool"),
        help="divide the weighted sum by the sum of the weights (mergekit 'normalize')",
    )

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        total = weighted_task_sum(bundle)
        if self.normalize:
            total.div_(weight_total(bundle))
        return MergedTensor(total.mul_(self.scaling))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [TaskArithmetic]
