"""Per-model weights (task_arithmetic, average, ties), and the linear and slerp mergers,
against independent numpy computations of the documented formulas (mergekit's
``linear``, ``task_arithmetic``, ``ties`` with weights; Shoemake's slerp)."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers.average import WeightAveraging
from pactframe_plugins.mergers.linear import LinearMerge
from pactframe_plugins.mergers.slerp import SLERP, gradient_value
from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic
from pactframe_plugins.mergers.ties import TIES

from pactframe.errors import InputError, InvalidParameterError
from pactframe.types import LayerBundle

WEIGHT = st.floats(0.1, 2.0)


@st.composite
def weighted_cases(draw, max_tasks=4):
    T = draw(st.integers(1, max_tasks))
    shape = draw(st.sampled_from([(3,), (4, 5), (2, 3, 2)]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    tvs = [rng.standard_normal(shape) for _ in range(T)]
    weights = [draw(WEIGHT) for _ in range(T)]
    return base, tvs, weights


def bundle(base, tvs, weights=None, name="model.layers.0.mlp.weight"):
    return LayerBundle(
        name,
        torch.from_numpy(np.array(base, dtype=np.float64)),
        [torch.from_numpy(np.array(tv, dtype=np.float64)) for tv in tvs],
        [f"t{i}" for i in range(len(tvs))],
        task_weights=weights,
    )


# ------------------------------------------------------------------ weighted sums
@settings(max_examples=40, deadline=None)
@given(weighted_cases(), st.floats(-1.0, 2.0), st.booleans())
def test_weighted_task_arithmetic_equals_lambda_times_weighted_sum(case, lam, normalize):
    """task_arithmetic with weights: delta = lambda * sum_t w_t Delta_t (/ sum_t w_t if
    normalize), mergekit's task_arithmetic formula, computed in numpy."""
    base, tvs, w = case
    out = TaskArithmetic(scaling=lam, normalize=normalize).merge(bundle(base, tvs, w)).delta
    ref = sum(wi * tv for wi, tv in zip(w, tvs))
    if normalize:
        ref = ref / sum(w)
    np.testing.assert_allclose(out.numpy(), lam * ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(weighted_cases())
def test_weighted_average_is_the_weighted_mean_of_the_models(case):
    """average with weights: base + delta = sum_t w_t theta_t / sum_t w_t."""
    base, tvs, w = case
    out = WeightAveraging().merge(bundle(base, tvs, w)).delta.numpy() + base
    ref = sum(wi * (base + tv) for wi, tv in zip(w, tvs)) / sum(w)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(weighted_cases(), st.booleans())
def test_linear_equals_mergekits_weighted_model_sum(case, normalize):
    """linear: base + delta = sum_t w_t theta_t, divided by sum_t w_t when normalize
    (mergekit's linear over the listed models)."""
    base, tvs, w = case
    out = LinearMerge(normalize=normalize).merge(bundle(base, tvs, w)).delta.numpy() + base
    ref = sum(wi * (base + tv) for wi, tv in zip(w, tvs))
    if normalize:
        ref = ref / sum(w)
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-11)


@settings(max_examples=30, deadline=None)
@given(weighted_cases())
def test_linear_without_weights_is_plain_averaging(case):
    """linear with no weights (every w_t = 1) equals the average merger."""
    base, tvs, _ = case
    b = bundle(base, tvs)
    np.testing.assert_allclose(
        LinearMerge().merge(b).delta.numpy(), WeightAveraging().merge(b).delta.numpy(), atol=1e-13
    )


def _ties_reference(tvs, weights, keep_fraction, disjoint):
    """mergekit's weighted TIES, written from its documentation: magnitude trim per
    model, weighted deltas, sign of their sum, weighted disjoint mean."""
    trimmed = []
    for tv in tvs:
        flat = np.abs(tv).ravel()
        k = math.ceil(keep_fraction * flat.size)
        thr = np.sort(flat)[::-1][k - 1]
        trimmed.append(np.where(np.abs(tv) >= thr, tv, 0.0))
    wd = np.stack([w * t for w, t in zip(weights, trimmed)])
    sign = np.sign(wd.sum(0))
    mask = (np.sign(wd) == sign) & (wd != 0)
    total = (wd * mask).sum(0)
    if disjoint == "sum":
        return total
    div = (np.array(weights).reshape((-1,) + (1,) * (wd.ndim - 1)) * mask).sum(0)
    return total / np.where(div == 0, 1.0, div)


@settings(max_examples=40, deadline=None)
@given(weighted_cases(), st.sampled_from([0.3, 0.6, 1.0]), st.sampled_from(["mean", "sum"]))
def test_weighted_ties_matches_a_numpy_reference(case, k, disjoint):
    """ties with weights = trim, elect sign(sum w_t hat_t), weighted disjoint mean/sum."""
    base, tvs, w = case
    out = TIES(keep_fraction=k, disjoint=disjoint).merge(bundle(base, tvs, w)).delta.numpy()
    np.testing.assert_allclose(out, _ties_reference(tvs, w, k, disjoint), rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(weighted_cases(), st.sampled_from([0.2, 0.5, 1.0]))
def test_ties_with_unit_weights_equals_ties_without_weights(case, k):
    """All w_t = 1 is the plain method (continuous data: no zero sums)."""
    base, tvs, _ = case
    ones = [1.0] * len(tvs)
    plain = TIES(keep_fraction=k).merge(bundle(base, tvs)).delta
    weighted = TIES(keep_fraction=k).merge(bundle(base, tvs, ones)).delta
    torch.testing.assert_close(weighted, plain, rtol=1e-12, atol=1e-12)


def test_weights_summing_to_zero_are_refused_when_normalising():
    with pytest.raises(InputError, match="sum to 0"):
        LinearMerge().merge(bundle(np.ones(3), [np.ones(3), np.ones(3)], [1.0, -1.0]))


# ------------------------------------------------------------------ slerp
def _slerp_numpy(t, v0, v1, threshold=0.9995):
    """Shoemake's formula on the flattened tensors, with mergekit's lerp fallback."""
    a, b = v0.ravel(), v1.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    dot = float(np.dot(a / na, b / nb))
    if abs(dot) > threshold:
        return (1 - t) * v0 + t * v1
    om = np.arccos(dot)
    return (np.sin((1 - t) * om) * v0 + np.sin(t * om) * v1) / np.sin(om)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.0, 1.0), st.sampled_from([(5,), (3, 4)]))
def test_slerp_matches_shoemakes_formula(seed, t, shape):
    """slerp(t, theta_0, theta_1) equals a numpy computation of the formula."""
    rng = np.random.default_rng(seed)
    base, ft = rng.standard_normal(shape), rng.standard_normal(shape)
    out = SLERP(t=t).merge(bundle(base, [ft - base])).delta.numpy() + base
    np.testing.assert_allclose(out, _slerp_numpy(t, base, ft), rtol=1e-9, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16))
def test_slerp_endpoints_are_the_base_and_the_fine_tune(seed):
    """t = 0 gives theta_0, t = 1 gives theta_1."""
    rng = np.random.default_rng(seed)
    base, ft = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    b = bundle(base, [ft - base])
    np.testing.assert_allclose(SLERP(t=0.0).merge(b).delta.numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(SLERP(t=1.0).merge(b).delta.numpy() + base, ft, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.0, 1.0))
def test_slerp_of_unit_vectors_stays_on_the_sphere(seed, t):
    """For unit-norm endpoints (not colinear), every interpolant has unit norm."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(6), rng.standard_normal(6)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    out = SLERP(t=t).merge(bundle(a, [b - a])).delta.numpy() + a
    assert abs(np.linalg.norm(out) - 1.0) < 1e-9


def test_slerp_falls_back_to_lerp_for_near_colinear_tensors():
    base = np.array([1.0, 2.0, 3.0])
    ft = 2.0 * base + 1e-6  # cos ~ 1
    out = SLERP(t=0.25).merge(bundle(base, [ft - base]))
    np.testing.assert_allclose(out.delta.numpy() + base, 0.75 * base + 0.25 * ft, atol=1e-12)
    assert out.records[0].data["lerp"] is True


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-2, 2), min_size=1, max_size=6), st.floats(0.0, 1.0))
def test_gradient_lists_interpolate_between_evenly_spaced_anchors(values, position):
    """A gradient read at p equals np.interp over anchors at linspace(0, 1, len)."""
    ref = np.interp(position, np.linspace(0.0, 1.0, len(values)), values)
    assert gradient_value(values, position) == pytest.approx(ref, abs=1e-9)


def test_slerp_t_per_filter_and_layer_as_mergekit():
    """mergekit's example: t for self_attn and mlp as gradients, 0.5 elsewhere; layer i of
    n reads the gradient at i/(n-1); embeddings at 0, final norm / head at 1."""
    t = [
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
        {"value": 0.5},
    ]
    m = SLERP(t=t, num_layers=9)
    assert m.t_for("model.layers.0.self_attn.q_proj.weight") == pytest.approx(0.0)
    assert m.t_for("model.layers.2.self_attn.q_proj.weight") == pytest.approx(0.5)
    assert m.t_for("model.layers.3.self_attn.q_proj.weight") == pytest.approx(0.4)
    assert m.t_for("model.layers.8.mlp.up_proj.weight") == pytest.approx(0.0)
    assert m.t_for("model.layers.1.mlp.up_proj.weight") == pytest.approx(0.75)
    assert m.t_for("model.layers.4.input_layernorm.weight") == pytest.approx(0.5)
    grad = SLERP(t=[0.2, 0.8], num_layers=4)
    assert grad.t_for("model.embed_tokens.weight") == pytest.approx(0.2)
    assert grad.t_for("lm_head.weight") == pytest.approx(0.8)


def test_slerp_refuses_gradients_without_num_layers_and_bad_t():
    with pytest.raises(InvalidParameterError, match="num_layers"):
        SLERP(t=[0.0, 1.0])
    with pytest.raises(InvalidParameterError, match="'t' parameter"):
        SLERP(t="half")
    with pytest.raises(InvalidParameterError, match="unknown key"):
        SLERP(t=[{"filter": "mlp", "value": 0.1, "density": 2}])
    with pytest.raises(InputError, match="no 't' entry matches"):
        SLERP(t=[{"filter": "mlp", "value": 0.1}]).t_for("model.layers.0.attn.weight")


def test_slerp_is_exact_for_one_model_only():
    assert SLERP.exact_models == 1
    b = bundle(np.ones(3), [np.ones(3), np.zeros(3)])
    with pytest.raises(InputError, match="exactly one"):
        SLERP().merge(b)


def test_weights_are_passed_unchanged_by_attrs_evolve():
    b = bundle(np.ones(2), [np.ones(2)], [0.5])
    assert attrs.evolve(b, name="x").task_weights == (0.5,)
    with pytest.raises(InputError, match="task weights"):
        bundle(np.ones(2), [np.ones(2)], [0.5, 0.5])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "merger",
    [
        LinearMerge(),
        LinearMerge(normalize=False),
        TaskArithmetic(normalize=True),
        TIES(),
        WeightAveraging(),
        SLERP(t=0.3),
    ],
    ids=lambda m: f"{m.name}",
)
def test_cpu_and_cuda_agree_with_weights(merger):
    """The weighted mergers and slerp give the same numbers on CUDA as on the CPU."""
    rng = np.random.default_rng(0)
    T = 1 if isinstance(merger, SLERP) else 3
    weights = None if isinstance(merger, SLERP) else [0.5, 1.5, 0.25]
    cpu = bundle(
        rng.standard_normal((12, 9)), [rng.standard_normal((12, 9)) for _ in range(T)], weights
    )
    cuda = cpu.map_tensors(lambda x: x.to("cuda"))
    out_cpu, out_cuda = merger.merge(cpu).delta, merger.merge(cuda).delta
    assert out_cuda.device.type == "cuda"
    torch.testing.assert_close(out_cuda.cpu(), out_cpu, rtol=1e-9, atol=1e-10)
