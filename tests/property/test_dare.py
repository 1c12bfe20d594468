"""DARE (Yu et al., ICML 2024): invariants (docs/invariants.md), statistics,
order independence, a hand-worked example and the contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.preprocessors.dare import DARE

from pactframe.errors import InvalidParameterError
from pactframe.testing import check_component
from tests.property._strategies_mergers import arrays_of, bundle_from_arrays, permuted

probabilities = st.floats(0.0, 0.99)
shapes = st.sampled_from([(4, 3), (7,), (), (2, 5)])


@st.composite
def dare_bundles(draw, num_tasks=None):
    s = draw(shapes)
    T = draw(num_tasks if num_tasks is not None else st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = [np.asarray(rng.standard_normal(s)) for _ in range(T)]
    return bundle_from_arrays(arrays, seed=draw(st.integers(0, 2**31 - 1)))


@pytest.mark.parametrize("component", [DARE(), DARE(drop_probability=1.0), DARE(0.3, False)])
def test_contract(component):
    check_component(component)


@given(dare_bundles())
def test_dare_with_p_zero_is_the_identity(bundle):
    """p = 0: every entry survives and 1/(1-0) = 1, bit for bit."""
    out = DARE(drop_probability=0.0).preprocess(bundle)
    assert all(torch.equal(a, b) for a, b in zip(out.task_vectors, bundle.task_vectors))


@given(dare_bundles())
def test_dare_with_p_one_drops_everything(bundle):
    """p = 1: all entries dropped (no rescale by 1/0)."""
    out = DARE(drop_probability=1.0).preprocess(bundle)
    assert all(torch.count_nonzero(tv) == 0 for tv in out.task_vectors)


@given(dare_bundles(), probabilities, st.booleans())
def test_dare_survivors_are_exactly_tau_over_one_minus_p(bundle, p, rescale):
    """Each output entry is either exactly 0 or exactly tau / (1 - p) (tau without rescale)."""
    out = DARE(drop_probability=p, rescale=rescale).preprocess(bundle)
    for before, after in zip(arrays_of(bundle), arrays_of(out)):
        expected = before / (1.0 - p) if rescale else before
        survived = after != 0
        assert np.array_equal(after[survived], expected[survived])


@given(dare_bundles(), probabilities)
def test_dare_is_deterministic_given_the_seed(bundle, p):
    """Same bundle seed -> same masks; inputs are not modified."""
    copy = [tv.clone() for tv in bundle.task_vectors]
    a = DARE(drop_probability=p).preprocess(bundle)
    b = DARE(drop_probability=p).preprocess(bundle)
    assert all(torch.equal(x, y) for x, y in zip(a.task_vectors, b.task_vectors))
    assert all(torch.equal(x, y) for x, y in zip(copy, bundle.task_vectors))


@settings(max_examples=20)
@given(st.lists(dare_bundles(num_tasks=st.integers(1, 3)), min_size=2, max_size=4), st.data())
def test_dare_does_not_depend_on_tensor_or_task_order(bundles, data):
    """Processing tensors in another order, or listing tasks in another order, gives
    each (tensor, task) the same mask (seeded by tensor seed and task name)."""
    dare = DARE(drop_probability=0.5)
    forward = [dare.preprocess(b) for b in bundles]
    for i in reversed(range(len(bundles))):
        again = dare.preprocess(bundles[i])
        assert all(torch.equal(x, y) for x, y in zip(again.task_vectors, forward[i].task_vectors))
    b = bundles[0]
    order = data.draw(st.permutations(list(range(b.num_tasks))))
    shuffled = dare.preprocess(permuted(b, order))
    for position, t in enumerate(order):
        assert torch.equal(shuffled.task_vectors[position], forward[0].task_vectors[t])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dare_statistics_mean_tends_to_tau_and_zero_fraction_to_p(p):
    """Over N = 400 seeds: |mean - tau| <= 5 |tau| sqrt(p / ((1-p) N)) per entry
    (5 standard deviations), and the fraction of zeros is within 5 sd of p."""
    rng = np.random.default_rng(0)
    tau = rng.standard_normal(300) + np.sign(rng.standard_normal(300))  # no zeros
    N = 400
    outs = np.stack(
        [
            DARE(drop_probability=p).preprocess(bundle_from_arrays([tau], seed=s)).task_vectors[0]
            for s in range(N)
        ]
    )
    bound = 5 * np.abs(tau) * np.sqrt(p / ((1 - p) * N))
    assert np.all(np.abs(outs.mean(axis=0) - tau) <= bound)
    zero_fraction = float((outs == 0).mean())
    assert abs(zero_fraction - p) <= 5 * np.sqrt(p * (1 - p) / outs.size)


def test_dare_hand_example():
    """tau = [2, -4, 6, 8, 10, -12], p = 0.5: survivors are doubled, the rest zeroed;
    the record reports the kept fraction that the output shows."""
    bundle = bundle_from_arrays([[2.0, -4.0, 6.0, 8.0, 10.0, -12.0]], seed=42)
    out = DARE(drop_probability=0.5).preprocess(bundle)
    values = out.task_vectors[0].numpy()
    doubled = np.array([4.0, -8.0, 12.0, 16.0, 20.0, -24.0])
    assert np.all((values == 0) | (values == doubled))
    assert out.records[-1].source == "dare"
    assert out.records[-1].data["kept_fraction"] == [round(float((values != 0).mean()), 6)]
    no_rescale = DARE(drop_probability=0.5, rescale=False).preprocess(bundle).task_vectors[0]
    assert np.array_equal(no_rescale.numpy() != 0, values != 0)


def test_dare_passes_integer_buffers_through():
    bundle = bundle_from_arrays([[1.0, 2.0]]).map_tensors(lambda x: x.to(torch.int64))
    assert DARE().preprocess(bundle) is bundle


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"drop_probability": 1.5}, r"'drop_probability' parameter of DARE must be a float in"),
        ({"rescale": 1}, "'rescale' parameter of DARE must be a bool"),
    ],
)
def test_bad_parameters_are_rejected_by_name(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        DARE(**kwargs)
