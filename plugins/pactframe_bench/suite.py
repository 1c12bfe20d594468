"""What the method comparison needs from a benchmark suite (vision-small, text)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from pactframe_bench.cache import read_json

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


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)``, restoring the caller's CPU RNG state after.

    Every random construction of the suites (module initialisation, dropout) runs
    inside one, so what a suite builds depends on its recipe and seed only, never on
    what drew from torch's global generator before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class SeedFolder:
    """The files of one built seed, shared by the suites: ``folder/<task>.safetensors``
    (fine-tuned mergeable tensors), ``folder/<task>.covariance.safetensors`` (PAVE's
    input covariances) and ``folder/individual.json`` (each fine-tuned model's accuracy
    on its own task, per split)."""

    folder: Path

    def checkpoint_path(self, task: str) -> Path:
        return self.folder / f"{task}.safetensors"

    def covariance_file(self, task: str) -> Path:
        return self.folder / f"{task}.covariance.safetensors"

    def finetuned_state(self, task: str) -> State:
        from safetensors.torch import load_file

        return load_file(str(self.checkpoint_path(task)))

    def individual_accuracy(self, split: str) -> dict[str, float] | None:
        """Each fine-tuned model's accuracy on its own task (None before it is built)."""
        path = self.folder / "individual.json"
        return read_json(path)[split] if path.exists() else None


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


def linear_head(weights: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``features (B, d) -> logits (B, C)`` of a frozen head with rows ``weights (C, d)``."""
    return lambda features: features @ weights.T


def task_data(
    name: str,
    inputs: Any,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    individual_accuracy: float | None,
) -> dict[str, Any]:
    """One task's data as the ``accuracy`` evaluator takes it (its mapping form)."""
    return {
        "name": name,
        "inputs": inputs,
        "labels": labels,
        "head": head,
        "individual_accuracy": individual_accuracy,
    }


@functools.cache
def accuracy_evaluator(batch_size: int | None = None) -> Any:
    """The registered model-level ``accuracy`` evaluator (built once per batch size).

    Reached through the registry like any component, so the benchmark depends on
    the built-in plugins only by name.
    """
    from pactframe.registry import build_registry

    params = {} if batch_size is None else {"batch_size": batch_size}
    return build_registry().create("evaluator", "accuracy", **params)


def evaluate_state(
    state: State | Mapping[str, State],
    load: Callable[[State], Callable[[Any], torch.Tensor]],
    data: list[Any],
    batch_size: int | None = None,
) -> Mapping[str, Any]:
    """The ``accuracy`` evaluator's data for one merged state, or for a mapping
    task -> state (a task-conditioned merge, loaded one task at a time)."""
    model: Any
    if state and all(isinstance(v, Mapping) for v in state.values()):
        model = LazyTaskModels(state, load)  # type: ignore[arg-type]
    else:
        model = load(state)  # type: ignore[arg-type]
    return accuracy_evaluator(batch_size).evaluate_model(model, data)
