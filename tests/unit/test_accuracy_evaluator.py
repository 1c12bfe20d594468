"""The ``accuracy`` evaluator against hand-worked examples."""

from __future__ import annotations

import json

import pytest
import torch
from pactframe_plugins.evaluators.accuracy import Accuracy, TaskData

from pactframe.errors import InputError, InvalidParameterError
from pactframe.testing import check_component


def identity(x):
    return x


def logits_are_features(features):
    return features


def test_accuracy_passes_the_contract_checks():
    check_component(Accuracy)
    assert Accuracy.level == "model"


def test_registered_under_its_name(registry):
    assert registry.get("evaluator", "accuracy") is Accuracy


def test_hand_worked_two_tasks_with_batching_and_normalization():
    # Task a: logits = inputs; argmax rows -> [0, 1, 0, 1]; labels [0, 1, 1, 1] -> 3/4 correct.
    a_inputs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    # Task b: head swaps the two logits; pre-batched inputs (2 + 1 examples).
    # [1,0] -> [0,1] -> 1; [0,5] -> [5,0] -> 0; [3,4] -> [4,3] -> 0; labels [1,1,0] -> 2/3.
    b_batches = [torch.tensor([[1.0, 0.0], [0.0, 5.0]]), torch.tensor([[3.0, 4.0]])]
    tasks = [
        TaskData("a", a_inputs, torch.tensor([0, 1, 1, 1]), logits_are_features, 0.8),
        {
            "name": "b",
            "inputs": b_batches,
            "labels": torch.tensor([1, 1, 0]),
            "head": lambda f: f.flip(1),
            "individual_accuracy": 1.0,
        },
    ]
    out = Accuracy(batch_size=3).evaluate_model(identity, tasks)
    json.dumps(out)
    assert out["tasks"]["a"] == {
        "accuracy": 0.75,
        "normalized_accuracy": 0.75 / 0.8,
        "correct": 3,
        "total": 4,
    }
    assert out["tasks"]["b"]["correct"] == 2 and out["tasks"]["b"]["total"] == 3
    assert out["tasks"]["b"]["normalized_accuracy"] == pytest.approx(2 / 3)
    assert out["mean_accuracy"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert out["mean_normalized_accuracy"] == pytest.approx((0.9375 + 2 / 3) / 2)


def test_task_conditioned_model_uses_each_tasks_own_model():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    models = {"keep": identity, "flip": lambda b: b.flip(1)}
    tasks = [
        TaskData("keep", x, labels, logits_are_features),
        TaskData("flip", x, labels, logits_are_features),
    ]
    out = Accuracy().evaluate_model(models, tasks)
    assert out["tasks"]["keep"]["accuracy"] == 1.0
    assert out["tasks"]["flip"]["accuracy"] == 0.0
    assert out["tasks"]["keep"]["normalized_accuracy"] is None
    assert out["mean_normalized_accuracy"] is None


def test_matches_a_numpy_reference_on_random_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(97, 5, generator=g)
    w = torch.randn(4, 5, generator=g)
    labels = torch.randint(0, 4, (97,), generator=g)
    xn, wn, yn = x.numpy(), w.numpy(), labels.numpy()
    expected = float(((xn @ wn.T).argmax(axis=1) == yn).mean())
    out = Accuracy(batch_size=10).evaluate_model(
        identity, [TaskData("t", x, labels, lambda f: f @ w.T, 0.5)]
    )
    assert out["tasks"]["t"]["accuracy"] == pytest.approx(expected)
    assert out["tasks"]["t"]["normalized_accuracy"] == pytest.approx(expected / 0.5)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([], "no tasks"),
        ([TaskData("t", torch.zeros(3, 2), torch.tensor([0, 1]), logits_are_features)], "labels"),
        ([TaskData("t", torch.zeros(2, 2), torch.tensor([0, 1]), lambda f: f[:, 0])], "shape"),
        (
            [TaskData("t", torch.zeros(2, 2), torch.tensor([0, 1]), logits_are_features, 1.5)],
            "individual_accuracy",
        ),
        (
            [TaskData("t", torch.zeros(2, 2), torch.tensor([0, 1]), logits_are_features)] * 2,
            "repeat",
        ),
        ([{"name": "t", "inputs": torch.zeros(2, 2)}], "expected name"),
    ],
)
def test_bad_input_names_the_task_and_what_to_do(tasks, message):
    with pytest.raises(InputError, match=message):
        Accuracy().evaluate_model(identity, tasks)


def test_missing_task_in_task_conditioned_model():
    with pytest.raises(InputError, match="no entry for task 'b'"):
        Accuracy().evaluate_model(
            {"a": identity}, [TaskData("b", torch.zeros(1, 2), torch.tensor([0]), identity)]
        )


def test_batch_size_is_validated():
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter of Accuracy"):
        Accuracy(batch_size=0)
