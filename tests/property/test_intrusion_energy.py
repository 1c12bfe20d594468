"""Intrusion energy (PACT paper eq. 37), invariant 11 of ALGORITHMS.md section 1.4."""

from __future__ import annotations

import json

import attrs
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from pactframe_plugins.evaluators.intrusion_energy import IntrusionEnergy
from pactframe_plugins.preprocessors.pact import PACTAligner

from pactframe import LayerBundle
from pactframe.testing import sample_bundles
from tests.property._pact_reference import arrays, np_top_basis, pact_cases


def np_intrusion(delta: np.ndarray, v0: np.ndarray) -> float:
    return float(np.linalg.norm(delta @ v0) ** 2 / np.linalg.norm(delta) ** 2)


@given(pact_cases(num_tasks=st.integers(1, 4), core_ranks=st.integers(1, 20)))
def test_11_intrusion_energy_lies_in_0_1_and_matches_numpy(case):
    """Invariant 11 (range): E_in(t) = ||Delta_t V_0K||_F^2 / ||Delta_t||_F^2 is in [0, 1],
    before and after PACT, and equals the NumPy value with V_0K from NumPy's SVD; it is
    None exactly for a zero task vector (PACT zeroes a task whose protect space is R^d_in)."""
    bundle, K, k = case
    processed = PACTAligner(core_rank=min(K, 4), task_rank=k).preprocess(bundle)
    data = IntrusionEnergy(core_rank=K).evaluate_tensor(bundle, processed, None)
    json.dumps(data)
    base, deltas = arrays(bundle)
    v0 = np_top_basis(base, K)
    assert data["core_rank"] == v0.shape[1]
    for name, d, p in zip(bundle.task_names, deltas, processed.task_vectors):
        for when, tv in (("before", d), ("after", p.numpy())):
            e = data[when][name]
            if e is None:
                assert not np.any(tv)
                continue
            assert 0.0 <= e <= 1.0
            if np.linalg.norm(tv) > 1e-12:
                np.testing.assert_allclose(e, np_intrusion(tv, v0), rtol=1e-9, atol=1e-12)


@given(
    pact_cases(num_tasks=st.integers(1, 4)),
    st.floats(1e-3, 1e3).flatmap(lambda c: st.sampled_from([c, -c])),
)
def test_11_intrusion_energy_is_invariant_to_scaling_the_task_vector(case, c):
    """Invariant 11 (scale): E_in(c Delta_t) = E_in(Delta_t) for every c != 0."""
    bundle, K, _ = case
    scaled = bundle.with_task_vectors([c * t for t in bundle.task_vectors])
    ev = IntrusionEnergy(core_rank=K)
    a = ev.evaluate_tensor(bundle, bundle, None)
    b = ev.evaluate_tensor(scaled, scaled, None)
    for name in bundle.task_names:
        np.testing.assert_allclose(b["before"][name], a["before"][name], rtol=1e-9)


def test_full_core_has_energy_one_and_orthogonal_task_has_energy_zero():
    """Hand-worked: with K = d_in the core spans R^{d_in}, so E_in = 1; a task vector
    whose rows are orthogonal to V_0K has E_in = 0; a zero task vector reports None."""
    base = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    inside = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    base = torch.cat([base, torch.zeros(1, 3, dtype=torch.float64)])  # (4, 3)
    inside = torch.cat([inside, torch.zeros(2, 3, dtype=torch.float64)])
    outside = torch.zeros(4, 3, dtype=torch.float64)
    outside[:, 2] = 1.0  # lives on e_3, outside the top-2 core {e_1, e_2}
    bundle = LayerBundle(
        "layers.0.weight", base, [inside, outside, torch.zeros_like(base)], ["a", "b", "z"]
    )
    top2 = IntrusionEnergy(core_rank=2).evaluate_tensor(bundle, bundle, None)
    assert top2["before"] == {"a": 1.0, "b": 0.0, "z": None}
    full = IntrusionEnergy(core_rank=3).evaluate_tensor(bundle, bundle, None)
    assert full["before"]["b"] == 1.0


def test_non_matrix_and_zero_base_tensors_report_a_skip():
    """A bias and a zero base give {"skipped": reason} rather than numbers."""
    bias = sample_bundles()[1]
    assert "not a matrix" in IntrusionEnergy().evaluate_tensor(bias, bias, None)["skipped"]
    weight = sample_bundles()[0]
    zero = attrs.evolve(weight, base=torch.zeros_like(weight.base))
    assert "all zeros" in IntrusionEnergy().evaluate_tensor(zero, zero, None)["skipped"]
