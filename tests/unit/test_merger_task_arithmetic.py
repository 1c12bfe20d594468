"""Task Arithmetic and weight averaging: hand examples, dense reference, contract, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pactframe_plugins.mergers.average import WeightAveraging
from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic

from pactframe.errors import InvalidParameterError
from pactframe.testing import check_component
from pactframe.types import LayerBundle
from tests.property._strategies_mergers import assert_close, bundle_from_arrays


@pytest.mark.parametrize("component", [TaskArithmetic, WeightAveraging])
def test_contract(component):
    check_component(component)


def hand_bundle():
    return bundle_from_arrays(
        [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [2.0, 0.0]], [[2.0, 1.0], [-2.0, 0.5]]],
        base=[[1.0, 2.0], [3.0, 4.0]],
    )


def test_task_arithmetic_hand_example():
    """sum = [[3, 3], [0, 1.5]]; lambda = 0.5 gives delta [[1.5, 1.5], [0, 0.75]]."""
    out = TaskArithmetic(scaling=0.5).merge(hand_bundle())
    assert_close(out.delta, np.array([[1.5, 1.5], [0.0, 0.75]]), rtol=0)
    assert_close(out.apply(hand_bundle().base), np.array([[2.5, 3.5], [3.0, 4.75]]), rtol=0)


def test_average_hand_example():
    """mean = [[1, 1], [0, 0.5]]: the plain average of the three fine-tuned weights."""
    bundle = hand_bundle()
    out = WeightAveraging().merge(bundle)
    finetuned_mean = (bundle.finetuned(0) + bundle.finetuned(1) + bundle.finetuned(2)) / 3
    assert_close(out.delta, np.array([[1.0, 1.0], [0.0, 0.5]]), rtol=1e-15)
    assert_close(out.apply(bundle.base), finetuned_mean.numpy(), rtol=1e-15)


def test_dense_reference_on_a_state_dict():
    """theta_0 + lambda * sum_t (theta_t - theta_0) over matrices, biases and a scalar (numpy)."""
    rng = np.random.default_rng(3)
    for shape in [(5, 3), (7,), ()]:
        base = rng.standard_normal(shape)
        thetas = [base + rng.standard_normal(shape) for _ in range(4)]
        bundle = bundle_from_arrays([th - base for th in thetas], base)
        expected = base + 0.3 * sum(th - base for th in thetas)
        assert_close(TaskArithmetic().merge(bundle).apply(bundle.base), expected, rtol=1e-13)
        expected_avg = np.mean(thetas, axis=0)
        assert_close(WeightAveraging().merge(bundle).apply(bundle.base), expected_avg, rtol=1e-13)


@pytest.mark.parametrize("merger", [TaskArithmetic(), WeightAveraging()])
def test_integer_buffers_are_refused_with_a_clear_reason(merger):
    """Non-float keys are not merged: supports() (the Merger default) says why."""
    buffer = LayerBundle(
        name="embeddings.position_ids",
        base=torch.arange(4),
        task_vectors=[torch.zeros(4, dtype=torch.int64)] * 2,
        task_names=["a", "b"],
    )
    reason = merger.supports(buffer)
    assert reason is not None and "position_ids" in reason and "int64" in reason


def test_float32_stays_float32():
    bundle = hand_bundle().map_tensors(lambda x: x.to(torch.float32))
    assert TaskArithmetic().merge(bundle).delta.dtype == torch.float32
    assert WeightAveraging().merge(bundle).delta.dtype == torch.float32


@pytest.mark.parametrize("value", [float("nan"), "0.3", True])
def test_bad_scaling_is_rejected(value):
    with pytest.raises(InvalidParameterError, match="'scaling' parameter of TaskArithmetic"):
        TaskArithmetic(scaling=value)
