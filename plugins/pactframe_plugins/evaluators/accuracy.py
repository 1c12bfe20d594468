"""Per-task accuracy and normalized accuracy of a merged model (model-level evaluator)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from pactframe import Evaluator, ModelEvaluator, hookimpl, param
from pactframe.errors import InputError
from pactframe.validation import integer


@attrs.frozen(eq=False)
class TaskData:
    """One task's evaluation data, as :meth:`Accuracy.evaluate_model` takes it.

    Attributes:
        name: the task name (as in the merge's ``task_names``).
        inputs: either one tensor of ``N`` examples (``(N, ...)``, cut into
            batches of ``batch_size`` along axis 0) or an iterable of ready-made
            batches (e.g. tokenizer dicts) passed to the model one at a time.
        labels: ``(N,)`` integer class indices, in the order of the examples.
        head: ``features (B, d) -> logits (B, C)``, the task's own classifier.
        individual_accuracy: accuracy of the task's own fine-tuned model on the
            same data, the denominator of the normalized accuracy; ``None``
            leaves normalized accuracy out for this task.
    """

    name: str
    inputs: Any
    labels: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]
    individual_accuracy: float | None = None


@attrs.frozen
class Accuracy(ModelEvaluator):
    """Top-1 accuracy of a merged model on each task, and normalized accuracy.

    For task ``t`` with examples ``(x_i, y_i)``, ``i = 1..N_t``:
    ``acc_t = (1/N_t) sum_i [argmax_c head_t(f(x_i))_c == y_i]`` where ``f`` is
    the merged model (shared encoder, or task ``t``'s own materialisation for a
    task-conditioned merge such as EMR), and the normalized accuracy is
    ``acc_t / acc_t^individual`` (Ilharco et al. 2023 "Editing Models with Task
    Arithmetic", sec. 4; Yadav et al. 2023 TIES-Merging, sec. 6 use the same
    ratio; TSV-M, Iso and PACT report its mean over tasks).

    ``evaluate_model(model, tasks)`` receives:

    - ``model``: a callable ``batch -> features (B, d)`` (an ``nn.Module`` in
      eval mode, or any function), or a mapping ``task name -> callable`` for
      task-conditioned merges. The caller places inputs and model on the same
      device; this evaluator moves nothing and runs under ``torch.no_grad``.
    - ``tasks``: a sequence of :class:`TaskData` (or mappings with the same
      keys).

    Returns JSON-serialisable data: ``{"tasks": {name: {"accuracy",
    "normalized_accuracy", "correct", "total"}}, "mean_accuracy",
    "mean_normalized_accuracy"}`` (means over tasks, unweighted; the normalized
    mean covers the tasks that carry an individual accuracy, ``None`` if none).
    """

    name: ClassVar[str] = "accuracy"

    batch_size: int = param(
        256, validator=integer(1), help="examples per forward pass when inputs is one tensor"
    )

    def evaluate_model(self, model: Any, tasks: Any) -> Mapping[str, Any]:
        task_list = [_as_task(t, i) for i, t in enumerate(_as_sequence(tasks))]
        names = [t.name for t in task_list]
        if len(set(names)) != len(names):
            raise InputError(f"accuracy evaluator: task names repeat: {names}.")
        per_task: dict[str, dict[str, Any]] = {}
        for task in task_list:
            correct, total = self._count_correct(_model_for(model, task.name), task)
            acc = correct / total
            norm = None
            if task.individual_accuracy is not None:
                ind = float(task.individual_accuracy)
                if not (math.isfinite(ind) and 0.0 < ind <= 1.0):
                    raise InputError(
                        f"accuracy evaluator: task {task.name!r} has individual_accuracy {ind!r}; "
                        "it must be in (0, 1] (the fine-tuned model's accuracy on this data)."
                    )
                norm = acc / ind
            per_task[task.name] = {
                "accuracy": acc,
                "normalized_accuracy": norm,
                "correct": correct,
                "total": total,
            }
        norms = [
            v["normalized_accuracy"]
            for v in per_task.values()
            if v["normalized_accuracy"] is not None
        ]
        return {
            "tasks": per_task,
            "mean_accuracy": sum(v["accuracy"] for v in per_task.values()) / len(per_task),
            "mean_normalized_accuracy": sum(norms) / len(norms) if norms else None,
        }

    def _count_correct(
        self, model: Callable[[Any], torch.Tensor], task: TaskData
    ) -> tuple[int, int]:
        labels = torch.as_tensor(task.labels).reshape(-1)
        correct = 0
        seen = 0
        with torch.no_grad():
            for batch in _batches(task.inputs, self.batch_size):
                logits = task.head(model(batch))
                if logits.ndim != 2:
                    raise InputError(
                        f"accuracy evaluator: the head of task {task.name!r} returned shape "
                        f"{tuple(logits.shape)}; it must return logits of shape (batch, classes)."
                    )
                n = logits.shape[0]
                if seen + n > labels.shape[0]:
                    raise InputError(
                        f"accuracy evaluator: task {task.name!r} gave more predictions than its "
                        f"{labels.shape[0]} labels; inputs and labels must have the same length."
                    )
                pred = logits.argmax(dim=1)
                target = labels[seen : seen + n].to(pred.device)
                correct += int((pred == target).sum().item())
                seen += n
        if seen != labels.shape[0] or seen == 0:
            raise InputError(
                f"accuracy evaluator: task {task.name!r} has {labels.shape[0]} labels but the "
                f"inputs gave {seen} predictions; pass one label per example (and at least one)."
            )
        return correct, seen


def _as_sequence(tasks: Any) -> Sequence[Any]:
    if isinstance(tasks, (TaskData, Mapping)) or not isinstance(tasks, Iterable):
        raise InputError(
            "accuracy evaluator: tasks must be a sequence of TaskData (or mappings with keys "
            f"name, inputs, labels, head, individual_accuracy); got {type(tasks).__name__}."
        )
    out = list(tasks)
    if not out:
        raise InputError("accuracy evaluator: no tasks given; pass at least one TaskData.")
    return out


def _as_task(task: Any, index: int) -> TaskData:
    if isinstance(task, TaskData):
        return task
    if isinstance(task, Mapping):
        try:
            return TaskData(**task)
        except TypeError as exc:
            raise InputError(
                f"accuracy evaluator: task #{index} has keys {sorted(task)}; expected name, "
                f"inputs, labels, head and optionally individual_accuracy ({exc})."
            ) from exc
    raise InputError(
        f"accuracy evaluator: task #{index} is a {type(task).__name__}; pass TaskData or a mapping."
    )


def _model_for(model: Any, task: str) -> Callable[[Any], torch.Tensor]:
    if isinstance(model, Mapping):
        if task not in model:
            raise InputError(
                f"accuracy evaluator: the task-conditioned model has no entry for task {task!r}; "
                f"it has {sorted(model)}."
            )
        return model[task]
    if not callable(model):
        raise InputError(
            f"accuracy evaluator: model must be callable (batch -> features) or a mapping of "
            f"task name -> callable; got {type(model).__name__}."
        )
    return model


def _batches(inputs: Any, batch_size: int) -> Iterable[Any]:
    if isinstance(inputs, torch.Tensor):
        for start in range(0, inputs.shape[0], batch_size):
            yield inputs[start : start + batch_size]
    else:
        yield from inputs


@hookimpl
def pactframe_register_evaluators() -> list[type[Evaluator]]:
    return [Accuracy]
