"""Invariants (docs/invariants.md) of Task Arithmetic and weight averaging."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers.average import WeightAveraging
from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic

from pactframe.testing.strategies import layer_bundles
from tests.property._strategies_mergers import (
    SIDE,
    arrays_of,
    assert_close,
    bundle_from_arrays,
    permuted,
    vector_bundles,
)

bundles = layer_bundles(num_tasks=st.integers(1, 4), rows=SIDE, cols=SIDE)
any_bundles = st.one_of(bundles, vector_bundles())
lambdas = st.floats(-3.0, 3.0, allow_nan=False)


@given(layer_bundles(num_tasks=st.just(1), rows=SIDE, cols=SIDE))
def test_ta_one_task_scaling_one_returns_finetuned_exactly(bundle):
    """T = 1, lambda = 1: base + delta is theta_1 bit for bit."""
    out = TaskArithmetic(scaling=1.0).merge(bundle)
    assert torch.equal(bundle.base + out.delta, bundle.finetuned(0))


@given(any_bundles)
def test_ta_scaling_zero_returns_base(bundle):
    """lambda = 0: the merged weight is theta_0 (delta identically zero)."""
    out = TaskArithmetic(scaling=0.0).merge(bundle)
    assert torch.equal(out.apply(bundle.base), bundle.base)


@given(any_bundles, lambdas, lambdas)
def test_ta_output_is_affine_in_lambda(bundle, a, b):
    """delta(a) + delta(b) = delta(a + b) and delta(lambda) = lambda * sum_t Delta_t (numpy)."""
    da = TaskArithmetic(scaling=a).merge(bundle).delta
    db = TaskArithmetic(scaling=b).merge(bundle).delta
    dab = TaskArithmetic(scaling=a + b).merge(bundle).delta
    assert_close(da + db, dab.numpy(), rtol=1e-11)
    assert_close(da, a * np.sum(arrays_of(bundle), axis=0), rtol=1e-11)


@given(any_bundles, st.data())
def test_ta_and_average_are_permutation_invariant(bundle, data):
    """Reordering the tasks leaves both merges unchanged (up to summation rounding)."""
    order = data.draw(st.permutations(list(range(bundle.num_tasks))))
    other = permuted(bundle, order)
    for merger in (TaskArithmetic(scaling=0.7), WeightAveraging()):
        assert_close(merger.merge(other).delta, merger.merge(bundle).delta.numpy(), rtol=1e-12)


@given(any_bundles, st.floats(0.1, 2.0))
def test_average_equals_ta_with_lambda_one_over_t(bundle, factor):
    """average(scaling=c) = task_arithmetic(scaling=c / T)."""
    avg = WeightAveraging(scaling=factor).merge(bundle).delta
    ta = TaskArithmetic(scaling=factor / bundle.num_tasks).merge(bundle).delta
    assert_close(avg, ta.numpy(), rtol=1e-12)


@settings(max_examples=20)
@given(layer_bundles(num_tasks=st.just(1), rows=SIDE, cols=SIDE), st.integers(1, 5))
def test_identical_task_vectors_with_lambda_one_over_t_give_theta0_plus_tau(bundle, T):
    """T copies of tau merged with lambda = 1/T give theta_0 + tau (TA and average)."""
    tau = bundle.task_vectors[0].numpy()
    copies = bundle_from_arrays([tau] * T, bundle.base.numpy())
    assert_close(TaskArithmetic(scaling=1.0 / T).merge(copies).delta, tau, rtol=1e-13)
    assert_close(WeightAveraging().merge(copies).delta, tau, rtol=1e-13)
