"""Composition of PACT with the four backbones (docs/invariants.md, PACT:
PACT_X(T = 1) = X, and K = 0 gives X), and PACT-TA against the NumPy reference."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.pact_presets import (
    PACTTSVM,
    PACTIsoC,
    PACTIsoCTS,
    PACTTaskArithmetic,
)
from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic
from pactframe_plugins.mergers.tsv_m import TSVM

from pactframe.testing.strategies import layer_bundles
from tests.property._pact_reference import arrays, np_pact, pact_cases

PAIRS = st.sampled_from(
    [
        (PACTTaskArithmetic, TaskArithmetic),
        (PACTIsoC, IsoC),
        (PACTIsoCTS, IsoCTS),
        (PACTTSVM, TSVM),
    ]
)


@given(layer_bundles(num_tasks=st.just(1)), PAIRS, st.floats(0.1, 3.0))
def test_pact_preset_with_one_task_equals_its_backbone(bundle, pair, scaling):
    """PACT-X with T = 1 equals X exactly (PACT has no other task to protect against)."""
    preset, backbone = pair
    got = preset(scaling=scaling).merge(bundle).delta
    want = backbone(scaling=scaling).merge(bundle).delta
    assert torch.equal(got, want)


@given(pact_cases(), PAIRS)
def test_pact_preset_with_zero_core_rank_equals_its_backbone(case, pair):
    """K = 0 makes PACT the identity, so PACT-X equals X for any number of tasks."""
    bundle, _, k = case
    preset, backbone = pair
    assert torch.equal(
        preset(core_rank=0, task_rank=k).merge(bundle).delta, backbone().merge(bundle).delta
    )


@given(pact_cases(), st.floats(0.1, 3.0))
def test_pact_task_arithmetic_is_the_scaled_sum_of_the_numpy_filtered_vectors(case, scaling):
    """PACT-TA = scaling * sum_t Delta_t' with Delta_t' from the dense NumPy reference."""
    bundle, K, k = case
    base, deltas = arrays(bundle)
    got = PACTTaskArithmetic(core_rank=K, task_rank=k, scaling=scaling).merge(bundle).delta
    want = scaling * np.sum(np_pact(base, deltas, K, k), axis=0)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)
