"""Linear merge: the weighted average of whole models (mergekit's ``linear``)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from pactframe import LayerBundle, MergedTensor, Merger, hookimpl, param
from pactframe.validation import instance_of
from pactframe_plugins.mergers._common import weight_total, weighted_task_sum


@attrs.frozen
class LinearMerge(Merger):
    """Weighted average of the fine-tuned weights: ``theta = sum_t w_t theta_t / sum_t w_t``.

    Wortsman et al., "Model soups", ICML 2022, Sec. 2 (a soup with mixing
    coefficients ``w_t``); the ``linear`` method of mergekit (Goddard et al.,
    "Arcee's MergeKit", 2024). With ``theta_t = theta_0 + Delta_t`` the merged
    delta is ``sum_t w_t Delta_t / W`` (``W = sum_t w_t``) when ``normalize`` is
    true, and ``sum_t w_t Delta_t + (W - 1) theta_0`` (the un-normalised sum
    ``sum_t w_t theta_t`` of the models, mergekit's ``normalize: false``) when it
    is false. The base model takes part only when it is listed among the models
    (mergekit's convention); ``pactframe convert`` does that for mergekit configs
    with no ``base_model``.

    Weights are ``models[].weight`` (1.0 when unset: then this is ``average``).
    Shapes: any floating tensor. See docs/mergers/linear.md.
    """

    name: ClassVar[str] = "linear"
    accepts_weights: ClassVar[bool] = True

    normalize: bool = param(
        True,
        validator=instance_of(bool, "a bool"),
        help="divide by the sum of the weights (mergekit 'normalize', default true)",
    )

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        total = weighted_task_sum(bundle)
        if self.normalize:
            return MergedTensor(total.div_(weight_total(bundle)))
        extra = float(sum(bundle.weights)) - 1.0
        if extra != 0.0:
            total.add_(bundle.base, alpha=extra)
        return MergedTensor(total)


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [LinearMerge]
