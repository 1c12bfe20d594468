"""Merge in-memory state dicts through the real pipeline, keeping each tensor's
:class:`~pactframe.types.MergedTensor` (the benchmark's merge step).

The benchmark needs the merged *delta* (to sweep a merger's scaling, which
multiplies it) and, for task-conditioned merges (EMR), each task's masks and
scales: :func:`merge_in_memory` is :func:`pactframe.api.merge_state_dicts` with
``keep_merged=True``. ``pactframe demo`` runs its final merges through the
pipeline on files (:mod:`pactframe_bench.files`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from pactframe.registry import Registry

State = dict[str, torch.Tensor]


@attrs.frozen
class MergeResult:
    """Merged deltas per tensor (``None`` for tensors the pipeline copied from the base)."""

    deltas: dict[str, Any]
    task_names: tuple[str, ...]

    @property
    def task_conditioned(self) -> bool:
        return any(m is not None and m.is_task_conditioned for m in self.deltas.values())

    def states(
        self, base: Mapping[str, torch.Tensor], scale: float = 1.0
    ) -> State | dict[str, State]:
        """``base + scale * delta`` (or task -> state for a task-conditioned merge)."""

        def one(task: str | None) -> State:
            out = {}
            for k, b in base.items():
                m = self.deltas.get(k)
                if m is None:
                    out[k] = b
                    continue
                d = m.delta if task is None else m.task_delta(task)
                out[k] = (b.to(d.dtype) + scale * d.cpu()).to(b.dtype)
            return out

        if self.task_conditioned:
            return {task: one(task) for task in self.task_names}
        return one(None)


def merge_in_memory(
    base: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, Mapping[str, torch.Tensor]],
    config: Mapping[str, Any],
    covariances: Mapping[str, Mapping[str, torch.Tensor] | None] | None = None,
    registry: Registry | None = None,
) -> MergeResult:
    """Run ``config``'s recipe (preprocessors, merger, rules, fallback, seed) over the
    in-memory models with :func:`pactframe.api.merge_state_dicts`; a task whose
    covariances are ``None`` has none."""
    from pactframe.api import merge_state_dicts

    covs = {n: c for n, c in (covariances or {}).items() if c is not None}
    result = merge_state_dicts(
        base, finetuned, config, covariances=covs or None, registry=registry, keep_merged=True
    )
    return MergeResult(dict(result.merged), result.task_names)
