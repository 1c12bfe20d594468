"""EMR-Merging: hand-worked example, whole-model vs single-tensor rescalers, contract, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pactframe_plugins.mergers.emr import EMR

from pactframe.errors import InputError
from pactframe.testing import check_component
from tests.property._strategies_mergers import assert_close, bundle_from_arrays


def test_contract():
    check_component(EMR)
    assert EMR.needs_prepass


def test_hand_example():
    """Delta_1 = [3, -1, 2, 0], Delta_2 = [-1, -2, 4, 1].
    sum [2, -3, 6, 1] -> flag [+, -, +, +]; mask_1 = [1, 1, 1, 0], mask_2 = [0, 1, 1, 1];
    tau_uni = [3, -2, 4, 1]; lambda_1 = (6/4) / (9/4) = 2/3, lambda_2 = (8/4) / (7/4) = 8/7;
    task 1 = 2/3 [3, -2, 4, 0], task 2 = 8/7 [0, -2, 4, 1]."""
    bundle = bundle_from_arrays([[3.0, -1.0, 2.0, 0.0], [-1.0, -2.0, 4.0, 1.0]])
    out = EMR().merge(bundle)
    assert_close(out.delta, np.array([3.0, -2.0, 4.0, 1.0]), rtol=0)
    masks = [m.tolist() for m in out.task_masks]
    assert masks == [[True, True, True, False], [False, True, True, True]]
    assert np.allclose(out.task_scales, [2 / 3, 8 / 7], rtol=1e-15)
    assert_close(out.task_delta("task0"), (2 / 3) * np.array([3.0, -2.0, 4.0, 0.0]), rtol=1e-15)
    assert_close(out.task_delta(1), (8 / 7) * np.array([0.0, -2.0, 4.0, 1.0]), rtol=1e-15)
    assert out.records[-1].data["rescaler_scope"] == "tensor"
    # the plain output base + delta is the unified model theta_0 + tau_uni
    assert_close(out.apply(bundle.base), 1.0 + np.array([3.0, -2.0, 4.0, 1.0]), rtol=0)


def test_zero_sums_elect_minus_one():
    """[1, 0] and [-1, 0]: both sums are 0 -> flag -1; only task 2 agrees at entry 0."""
    out = EMR().merge(bundle_from_arrays([[1.0, 0.0], [-1.0, 0.0]]))
    assert_close(out.delta, np.array([-1.0, 0.0]), rtol=0)
    assert [m.tolist() for m in out.task_masks] == [[False, False], [True, False]]
    assert out.task_scales[0] == 1.0  # empty mask: lambda is 1 and the task delta is 0
    assert torch.count_nonzero(out.task_delta(0)) == 0


def test_whole_model_rescaler_is_a_sum_of_per_tensor_means():
    """Tensor a (size 1): task 1 = [2], task 2 = [-1]; tensor b (size 4): task 1 = [1, 1, 1, 1],
    task 2 = [1, 3, 0, 0]. All sums are positive: tau_a = [2] (only task 1 agrees),
    tau_b = [1, 3, 1, 1]; mask_2 on b = [1, 1, 0, 0].
    Numerators: task 1: 2 + 1 = 3; task 2: 1 + 1 = 2.
    Denominators: task 1: 2 + mean([1, 3, 1, 1]) = 3.5; task 2: 0 + mean([1, 3, 0, 0]) = 1.
    lambda = (3 / 3.5, 2); merging tensor a alone would give (1, 1)."""
    a = bundle_from_arrays([[2.0], [-1.0]], name="a")
    b = bundle_from_arrays([[1.0, 1.0, 1.0, 1.0], [1.0, 3.0, 0.0, 0.0]], name="b")
    merger = EMR()
    state = merger.prepare([a, b])
    assert np.allclose(state.scales, [3 / 3.5, 2.0], rtol=1e-15)
    assert_close(merger.merge(b, state).delta, np.array([1.0, 3.0, 1.0, 1.0]), rtol=0)
    assert merger.merge(a, state).records[-1].data["rescaler_scope"] == "model"
    assert np.allclose(merger.merge(a).task_scales, [1.0, 1.0])


def test_state_for_other_tasks_is_an_input_error():
    merger = EMR()
    state = merger.prepare([bundle_from_arrays([[1.0], [2.0]], task_names=["a", "b"])])
    with pytest.raises(InputError, match="prepared state is for tasks"):
        merger.merge(bundle_from_arrays([[1.0], [2.0]], task_names=["a", "c"]), state)
    with pytest.raises(InputError, match="same tasks in the same order"):
        merger.prepare(
            [
                bundle_from_arrays([[1.0], [2.0]], task_names=["a", "b"]),
                bundle_from_arrays([[1.0], [2.0]], task_names=["b", "a"]),
            ]
        )


def test_float32_and_integer_buffers():
    bundle = bundle_from_arrays([[1.0, -2.0], [3.0, 1.0]]).map_tensors(lambda x: x.float())
    out = EMR().merge(bundle)
    assert out.delta.dtype == torch.float32 and out.task_delta(0).dtype == torch.float32
    ints = bundle.map_tensors(lambda x: x.to(torch.int64))
    assert "int64" in EMR().supports(ints)  # the Merger default; the plan copies them
    assert EMR().prepare([ints]) == EMR().prepare([])  # the prepass skips what it declines
