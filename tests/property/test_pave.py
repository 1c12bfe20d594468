"""PAVE purification invariants (docs/invariants.md) against numpy references."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.decomposers.asvd import ActivationAwareSVD
from pactframe_plugins.decomposers.co_svd import ContextOrientedSVD
from pactframe_plugins.decomposers.svd_llm import WhitenedSVD
from pactframe_plugins.preprocessors.pave import PAVEPurifier

from pactframe import LayerBundle
from pactframe.errors import InputError
from pactframe.linalg import damped_covariance
from pactframe.registry import build_registry
from pactframe.testing import check_component
from pactframe.testing.strategies import layer_bundles, orthonormal_columns
from tests.property._pave_reference import algorithm1, damped, pave_reference, truncated_svd

ABSOLUTE = ContextOrientedSVD(damping=0.1, damping_mode="absolute")
small_bundles = layer_bundles(
    with_covariance=True,
    num_tasks=st.integers(1, 3),
    rows=st.integers(2, 12),
    cols=st.integers(2, 12),
)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def _record(bundle: LayerBundle) -> dict:
    (rec,) = [r for r in bundle.records if r.source == "pave"]
    return dict(rec.data)


@settings(max_examples=25)
@given(
    small_bundles,
    st.sampled_from(["spectral", "uniform"]),
    st.sampled_from([ContextOrientedSVD(), ABSOLUTE]),
)
def test_full_rank_gives_back_the_plain_task_vector_for_any_invertible_c(
    bundle, allocation, decomposer
):
    """rho = 1 keeps r = R, and SVD_R(W C_reg) C_reg^-1 = W: Delta_PAVE = Delta."""
    pave = PAVEPurifier(rho=1.0, allocation=allocation, decomposer=decomposer)
    out = pave.preprocess(bundle, pave.prepare([bundle]))
    for tv, orig in zip(out.task_vectors, bundle.task_vectors):
        scale = float(torch.linalg.matrix_norm(bundle.base)) + 1.0
        np.testing.assert_allclose(_np(tv), _np(orig), atol=1e-8 * scale)


@settings(max_examples=25)
@given(
    small_bundles,
    st.floats(0.01, 100.0),
    st.sampled_from([Fraction(1, 2), Fraction(3, 4), Fraction(7, 8)]),
)
def test_scaled_identity_covariance_gives_the_truncated_svd_of_w_ft(bundle, c, rho):
    """C = cI: W_dagger = SVD_r(W_ft) (numpy), r = max(1, round(R rho)) (uniform)."""
    n = bundle.base.shape[1]
    covs = [c * torch.eye(n, dtype=torch.float64)] * bundle.num_tasks
    bundle = LayerBundle(bundle.name, bundle.base, bundle.task_vectors, bundle.task_names, covs)
    R = min(bundle.base.shape)
    r = max(1, round(R * rho))
    for route in ("gram", "exact"):
        out = PAVEPurifier(rho=float(rho), allocation="uniform", route=route).preprocess(bundle)
        for t, tv in enumerate(out.task_vectors):
            w_ft = _np(bundle.finetuned(t))
            expected = truncated_svd(w_ft, r) - _np(bundle.base)
            np.testing.assert_allclose(_np(tv), expected, atol=1e-9 * (np.linalg.norm(w_ft) + 1))


@pytest.mark.parametrize("route", ["gram", "exact"])
@settings(max_examples=25)
@given(small_bundles, st.sampled_from([0.5, 0.75, 7 / 8]))
def test_activated_error_equals_the_tail_energy_of_w_c_and_rank_is_at_most_r(route, bundle, rho):
    """||(W_dagger - W_ft) C_reg||_F^2 = sum_{j>r} sigma_j(W_ft C_reg)^2 and rank(W_dagger) <= r,
    with C_reg and the SVD computed independently in numpy; the record's tail energy agrees.
    Both routes: the SVD of W C_reg mapped back by C_reg^-1, and the Gram route's
    U_r U_r^T W_ft (the same matrix by an identity, no inverse)."""
    out = PAVEPurifier(rho=rho, allocation="uniform", route=route).preprocess(bundle)
    data = _record(out)
    for t, (task, tv) in enumerate(zip(bundle.task_names, out.task_vectors)):
        c_reg = damped(_np(bundle.covariance(t)))
        w_ft = _np(bundle.finetuned(t))
        w_dag = _np(tv) + _np(bundle.base)
        r = data["tasks"][task]["rank"]
        sigma = np.linalg.svd(w_ft @ c_reg, compute_uv=False)
        err = np.linalg.norm((w_dag - w_ft) @ c_reg) ** 2
        assert err == pytest.approx(np.sum(sigma[r:] ** 2), rel=1e-6, abs=1e-12 * sigma[0] ** 2)
        assert data["tasks"][task]["normalized_tail_energy"] == pytest.approx(
            np.sum((sigma[r:] / sigma[0]) ** 2), rel=1e-6, abs=1e-14
        )
        assert np.linalg.matrix_rank(w_dag, tol=1e-8 * np.linalg.norm(w_dag)) <= r
        np.testing.assert_allclose(
            w_dag, pave_reference(w_ft, c_reg, r), atol=1e-8 * np.linalg.norm(w_ft)
        )


@settings(max_examples=20)
@given(
    st.integers(2, 10),
    st.integers(0, 2**32 - 1),
    st.integers(0, 9),
    st.sampled_from(["relative", "absolute"]),
)
def test_damping_loop_postconditions(n, seed, deficiency, mode):
    """For PSD (possibly singular) C: C_reg is symmetric PD, ||C_reg C_reg^-1 - I||_F < 0.05
    and eps = start * 2^j (start 0.01 relative, 0.1 absolute as in the PAVE code)."""
    rng = np.random.default_rng(seed)
    k = max(n - deficiency, 0)
    x = rng.standard_normal((3 * n, n)) @ np.diag(rng.uniform(0.1, 10, n))
    x[:, k:] = 0.0  # rank-deficient inputs when deficiency > 0
    cov = x.T @ x / x.shape[0] + (np.eye(n) if k == 0 else 0.0)
    start = 0.01 if mode == "relative" else 0.1
    c_reg, inv, eps = damped_covariance(torch.from_numpy(cov), damping=start, mode=mode)
    c_reg, inv = _np(c_reg), _np(inv)
    assert np.allclose(c_reg, c_reg.T)
    assert np.linalg.eigvalsh(c_reg).min() > 0
    assert np.linalg.norm(c_reg @ inv - np.eye(n)) < 0.05
    j = math.log2(eps / start)
    assert j >= 0 and abs(j - round(j)) < 1e-9


def _model_bundles(seed: int, num_layers: int = 3, num_tasks: int = 3) -> list[LayerBundle]:
    rng = np.random.default_rng(seed)
    bundles = []
    for layer in range(num_layers):
        m, n = int(rng.integers(4, 9)), int(rng.integers(4, 9))
        base = rng.standard_normal((m, n))
        tvs, covs = [], []
        for _ in range(num_tasks):
            # task vectors with decaying spectra of different speeds, so allocations differ
            decay = rng.uniform(0.2, 0.9)
            u, v = orthonormal_columns(rng, m, min(m, n)), orthonormal_columns(rng, n, min(m, n))
            tvs.append((u * decay ** np.arange(min(m, n))) @ v.T)
            x = rng.standard_normal((64, n)) * rng.uniform(0.5, 2.0, n)
            covs.append(x.T @ x / 64)
        t = torch.from_numpy
        bundles.append(
            LayerBundle(
                f"layer{layer}.weight",
                t(base),
                [t(a) for a in tvs],
                ["a", "b", "c"],
                [t(c) for c in covs],
            )
        )
    return bundles


@pytest.mark.parametrize("output", ["per_model", "per_layer"])
def test_two_pass_ranks_follow_algorithm_1_computed_independently(output):
    """prepare() + preprocess() over a 3-layer, 3-task model: each tensor's ranks equal the
    per-layer Algorithm 1 ranks (per_layer) or max(1, round(R rho_i)) (per_model), with the
    spectra of W_ft C_reg, the allocation and rho_i all computed in numpy in the test."""
    rho = Fraction(3, 4)
    bundles = _model_bundles(0)
    pave = PAVEPurifier(rho=float(rho), allocation_output=output)
    state = pave.prepare(iter(bundles))
    expected_layer: dict[str, list[int]] = {}
    kept, full = np.zeros(3), 0
    for b in bundles:
        spectra = [
            np.linalg.svd(_np(b.finetuned(t)) @ damped(_np(b.covariance(t))), compute_uv=False)
            for t in range(3)
        ]
        expected_layer[b.name] = algorithm1(spectra, rho)
        kept += expected_layer[b.name]
        full += min(b.base.shape)
    rho_i = kept / full
    assert len({tuple(v) for v in expected_layer.values()}) > 1 or len(set(rho_i)) > 1
    for b in bundles:
        data = _record(pave.preprocess(b, state))
        R = min(b.base.shape)
        assert data["scope"] == "model" and data["R"] == R
        for t, task in enumerate(b.task_names):
            entry = data["tasks"][task]
            want = (
                expected_layer[b.name][t] if output == "per_layer" else max(1, round(R * rho_i[t]))
            )
            assert entry["rank"] == want
            assert entry["layer_rank"] == expected_layer[b.name][t]
            assert entry["rho_i"] == pytest.approx(rho_i[t])


def test_without_a_prepass_state_the_bundle_is_allocated_alone_and_the_record_says_so():
    b = _model_bundles(1, num_layers=1)[0]
    data = _record(PAVEPurifier(rho=0.75).preprocess(b))
    assert data["scope"] == "tensor" and "no prepass state" in data["scope_reason"]
    spectra = [
        np.linalg.svd(_np(b.finetuned(t)) @ damped(_np(b.covariance(t))), compute_uv=False)
        for t in range(3)
    ]
    assert [data["tasks"][t]["rank"] for t in b.task_names] == algorithm1(spectra, Fraction(3, 4))


def test_conv1d_layout_is_purified_as_the_transpose():
    """input_axis = 0 ((d_in, d_out) storage) gives the transpose of the nn.Linear result."""
    b = _model_bundles(2, num_layers=1)[0]
    t_bundle = LayerBundle(
        b.name,
        b.base.T.contiguous(),
        [tv.T.contiguous() for tv in b.task_vectors],
        b.task_names,
        b.covariances,
        input_axis=0,
    )
    pave = PAVEPurifier(rho=0.75, allocation="uniform")
    plain, transposed = pave.preprocess(b), pave.preprocess(t_bundle)
    for a, c in zip(plain.task_vectors, transposed.task_vectors):
        assert c.shape == a.T.shape
        torch.testing.assert_close(c, a.T, rtol=1e-10, atol=1e-12)


def test_tasks_and_tensors_without_covariance_keep_the_plain_task_vector_and_say_so():
    b = _model_bundles(3, num_layers=1)[0]
    partial = LayerBundle(
        b.name, b.base, b.task_vectors, b.task_names, [b.covariance(0), None, b.covariance(2)]
    )
    out = PAVEPurifier(rho=0.75).preprocess(partial)
    assert torch.equal(out.task_vectors[1], b.task_vectors[1])
    assert not torch.allclose(out.task_vectors[0], b.task_vectors[0])
    data = _record(out)
    assert data["tasks"]["b"] == {"action": "plain", "reason": "no input covariance for this task"}
    json.dumps(data)
    cases = {
        "no input covariance": LayerBundle("layer9.weight", b.base, b.task_vectors, b.task_names),
        "not a matrix": LayerBundle(
            "bias", b.base[0], [tv[0] for tv in b.task_vectors], b.task_names
        ),
        "exclude pattern": b,
    }
    pave = PAVEPurifier(exclude=r"^layer0")
    for reason, bundle in cases.items():
        out = pave.preprocess(bundle, pave.prepare([bundle]))
        assert all(torch.equal(x, y) for x, y in zip(out.task_vectors, bundle.task_vectors))
        data = _record(out)
        assert data["action"] == "passed_through" and reason in data["reason"]


def test_half_precision_is_computed_in_float32_and_returned_in_the_input_dtype():
    b = _model_bundles(4, num_layers=1)[0]
    half = b.map_tensors(lambda x: x.to(torch.bfloat16))
    out = PAVEPurifier(rho=1.0).preprocess(half)
    for tv, ref in zip(out.task_vectors, b.task_vectors):
        assert tv.dtype == torch.bfloat16
        assert float((tv.double() - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 0.05


def test_wrong_covariance_shape_names_tensor_and_task():
    b = _model_bundles(5, num_layers=1)[0]
    n = b.base.shape[1]
    bad = LayerBundle(b.name, b.base, b.task_vectors, b.task_names, [torch.eye(n + 1)] * 3)
    with pytest.raises(InputError, match=r"layer0\.weight.*task 'a'.*\(" + str(n + 1)):
        PAVEPurifier().preprocess(bad)


@pytest.mark.parametrize(
    "pave",
    [
        PAVEPurifier(),
        PAVEPurifier(allocation="uniform"),
        PAVEPurifier(allocation_output="per_layer", rho=0.5),
        PAVEPurifier(decomposer=ActivationAwareSVD()),
        PAVEPurifier(decomposer=WhitenedSVD()),
        PAVEPurifier(decomposer=ABSOLUTE),
    ],
)
def test_pave_passes_the_component_contract(pave):
    check_component(pave)


def test_registry_builds_pave_with_a_decomposer_named_in_a_config():
    registry = build_registry()
    pave = registry.build("preprocessor", {"name": "pave", "rho": 0.875, "decomposer": "svd_llm"})
    assert isinstance(pave, PAVEPurifier) and isinstance(pave.decomposer, WhitenedSVD)
    assert pave.rho == 0.875
