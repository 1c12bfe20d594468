"""Exact selection (``kth_largest``) and in-place task sums used by the fast mergers.

References are independent: numpy's full sort for the k-th largest value, and
torch's own stacked reduction for the task sum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers import _selection
from pactframe_plugins.mergers._common import summed_task_vectors
from pactframe_plugins.mergers._selection import kth_largest

from pactframe import LayerBundle
from pactframe.errors import InputError


def numpy_kth_largest(values: np.ndarray, k: int) -> float:
    """k-th largest by a full sort, NaN counted as the largest (torch.sort's order)."""
    order = np.sort(values)  # numpy puts NaN last, i.e. largest
    return float(order[values.size - k])


@pytest.fixture(scope="module")
def small_bracket():
    """Route small tensors through the sample bracket (the path big tensors take)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_selection, "DIRECT_LIMIT", 64)
        patch.setattr(_selection, "SAMPLE_SIZE", 256)
        patch.setattr(_selection, "MIN_SAMPLE_SIZE", 64)
        yield


def _values(seed: int, n: int, kind: str, dtype: torch.dtype) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if kind == "ties":  # few distinct magnitudes: many entries share the answer
        data = rng.integers(0, 7, n) / 4.0
    elif kind == "heavy":  # magnitudes over many decades
        data = np.abs(rng.standard_normal(n)) * np.exp(3 * rng.standard_normal(n))
    else:
        data = np.abs(rng.standard_normal(n))
    return torch.from_numpy(data).to(dtype)


@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(65, 5000),
    kind=st.sampled_from(["normal", "ties", "heavy"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    fraction=st.floats(0.0, 1.0),
)
def test_kth_largest_equals_the_full_sort_on_random_and_tie_heavy_inputs(
    small_bracket, seed, n, kind, dtype, fraction
):
    """Invariant: kth_largest(v, k) is the value at rank k of a descending full sort
    (and torch.kthvalue's n - k + 1 smallest), whatever the ties."""
    values = _values(seed, n, kind, dtype)
    k = min(max(1, round(fraction * n)), n)
    got = kth_largest(values, k)
    assert got.dtype == dtype and got.ndim == 0
    assert float(got) == numpy_kth_largest(values.numpy(), k)
    assert float(got) == float(torch.kthvalue(values, n - k + 1).values)


def test_kth_largest_on_a_large_fp16_valued_tensor_takes_the_bracket_and_is_exact():
    """Above DIRECT_LIMIT, on fp16-valued magnitudes (tens of thousands of exact ties)."""
    n = _selection.DIRECT_LIMIT + 12345
    g = torch.Generator().manual_seed(3)
    values = (0.002 * torch.randn(n, generator=g)).half().float().abs()
    for k in (1, n // 4, n // 2, n - 1, n):
        assert float(kth_largest(values, k)) == numpy_kth_largest(values.numpy(), k)


def test_kth_largest_falls_back_when_the_bracket_misses(small_bracket, monkeypatch):
    """A sample whose bracket misses the rank (here: always) costs time, never exactness."""
    monkeypatch.setattr(_selection, "_bracketed", lambda values, k: None)
    values = _values(1, 1000, "ties", torch.float32)
    assert float(kth_largest(values, 300)) == numpy_kth_largest(values.numpy(), 300)


def test_kth_largest_counts_nan_as_largest_like_torch_kthvalue(small_bracket):
    values = _values(2, 500, "normal", torch.float32)
    values[::50] = float("nan")  # 10 NaNs
    assert torch.isnan(kth_largest(values, 10))
    assert float(kth_largest(values, 11)) == numpy_kth_largest(values.numpy(), 11)


@pytest.mark.parametrize("k", [0, 6])
def test_kth_largest_rejects_a_rank_outside_1_to_n(k):
    with pytest.raises(InputError, match="rank 1 <= k <= numel"):
        kth_largest(torch.ones(5), k)


@settings(max_examples=20)
@given(
    seed=st.integers(0, 2**32 - 1),
    tasks=st.integers(1, 4),
    shape=st.sampled_from([(), (7,), (33, 17), (40, 300)]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_summed_task_vectors_is_bit_identical_to_the_stacked_sum_up_to_four_tasks(
    seed, tasks, shape, dtype
):
    """Invariant (T <= 4): adding the tasks in order into one zeroed buffer gives the
    same bits as torch.stack(tvs).sum(dim=0), signed zeros included."""
    rng = np.random.default_rng(seed)
    arrays = [
        np.asarray(rng.standard_normal(shape) * np.exp(4 * rng.standard_normal(shape)), dtype)
        for _ in range(tasks)
    ]
    for a in arrays:
        a.reshape(-1)[::3] = -0.0
    tvs = [torch.from_numpy(np.array(a)) for a in arrays]
    bundle = LayerBundle(
        "w", torch.ones(shape, dtype=tvs[0].dtype), tvs, [f"t{i}" for i in range(tasks)]
    )
    expected = torch.stack(bundle.task_vectors).sum(dim=0)
    got = summed_task_vectors(bundle)
    assert got.is_contiguous()
    assert np.array_equal(
        got.numpy().reshape(-1).view(np.uint8), expected.numpy().reshape(-1).view(np.uint8)
    )
