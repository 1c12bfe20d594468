"""What the method comparison needs from a benchmark suite (vision-small, text)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch

State = dict[str, torch.Tensor]


class BuiltSuite(Protocol):
    """A suite built for one fine-tuning seed: base, T fine-tuned models, heads, data.

    ``base_state`` / ``finetuned_state`` hold the mergeable tensors only (the
    parts that fine-tuning changed; heads and frozen embeddings stay out).
    ``evaluate`` takes one merged state, or a mapping task -> state for a
    task-conditioned merge, and returns the ``accuracy`` evaluator's data on
    ``split`` ("validation" or "test").
    """

    task_names: tuple[str, ...]

    def base_state(self) -> State: ...

    def finetuned_state(self, task: str) -> State: ...

    def covariance_file(self, task: str) -> Any: ...

    folder: Any

    def evaluate(self, state: State | Mapping[str, State], split: str) -> Mapping[str, Any]: ...

    def individual_accuracy(self, split: str) -> dict[str, float] | None: ...


class LazyTaskModels(Mapping[str, Callable[[Any], torch.Tensor]]):
    """task -> model callable, loading each task's state into one module on access.

    The accuracy evaluator visits tasks one at a time, so one module serves
    every task of a task-conditioned merge without T copies in memory.
    """

    def __init__(self, states: Mapping[str, State], load: Callable[[State], Callable[[Any], Any]]):
        self._states = states
        self._load = load

    def __getitem__(self, task: str) -> Callable[[Any], torch.Tensor]:
        return self._load(self._states[task])

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)
