"""Iso-C, Iso-CTS and TSV-M: hand-worked examples, contract, fallback rule, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pactframe_plugins.mergers.average import WeightAveraging
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic
from pactframe_plugins.mergers.tsv_m import TSVM

from pactframe import build_registry
from pactframe.errors import InvalidParameterError
from pactframe.testing import check_component
from tests.property._references_mergers import ref_iso_c, ref_iso_cts, ref_tsv_m
from tests.property._strategies_mergers import assert_close, bundle_from_arrays

SPECTRAL = [IsoC, IsoCTS, TSVM]


@pytest.mark.parametrize("component", SPECTRAL)
def test_contract(component):
    check_component(component)


def test_contract_with_non_default_settings():
    check_component(TSVM(rank_split="balanced", fallback=TaskArithmetic(scaling=0.5)))
    check_component(IsoCTS(common_space_fraction=0.3))


def test_iso_c_hand_example():
    """M = [[0, 3], [1, 0]] has sigma = (3, 1) and polar factor [[0, 1], [1, 0]]:
    Iso-C gives mean(sigma) = 2 times the polar factor."""
    bundle = bundle_from_arrays([[[0.0, 1.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]])
    assert_close(IsoC().merge(bundle).delta, np.array([[0.0, 2.0], [2.0, 0.0]]), rtol=1e-14)
    assert_close(IsoC(scaling=0.5).merge(bundle).delta, np.array([[0.0, 1.0], [1.0, 0.0]]))


def test_tsv_m_hand_example_floor_and_balanced_splits():
    """3x3, T = 2. Delta_1 = diag(3, 0, 1), Delta_2 = diag(0, 2, 0).
    floor: int(3/2) = 1 slot each -> diag(3, 2, 0) (task 1's sigma = 1 is dropped);
    balanced: the first task gets the remainder slot -> diag(3, 2, 1)."""
    bundle = bundle_from_arrays([np.diag([3.0, 0.0, 1.0]), np.diag([0.0, 2.0, 0.0])])
    assert_close(TSVM().merge(bundle).delta, np.diag([3.0, 2.0, 0.0]), rtol=1e-14)
    balanced = TSVM(rank_split="balanced").merge(bundle).delta
    assert_close(balanced, np.diag([3.0, 2.0, 1.0]), rtol=1e-14)


def test_iso_cts_hand_example():
    """3x3, T = 2, f = 0.4: c = int(1.2) = 1, s = round(2/2) = 1.
    Sum = diag(5, 1, 0.7): common direction e1 (sigma 5). Residuals: diag(0, 1, 0.2)
    -> e2 (sigma 1), diag(0, 0, 0.5) -> e3 (sigma 0.5). U_hat = [e2, e3, e1] is already
    orthonormal, so the result is mean(1, 0.5, 5) I = (6.5 / 3) I, while Iso-C gives
    mean(5, 1, 0.7) I = (6.7 / 3) I."""
    bundle = bundle_from_arrays([np.diag([3.0, 1.0, 0.2]), np.diag([2.0, 0.0, 0.5])])
    out = IsoCTS(common_space_fraction=0.4).merge(bundle)
    assert_close(out.delta, (6.5 / 3) * np.eye(3), rtol=1e-14)
    assert_close(IsoC().merge(bundle).delta, (6.7 / 3) * np.eye(3), rtol=1e-14)
    assert out.records[-1].data == {"rule": "iso_cts", "common_dims": 1, "dims_per_task": 1}


def test_dense_references_on_a_rectangular_example():
    """A fixed 6x4, T = 3 example (r = 4 is not divisible by 3) against the numpy references."""
    rng = np.random.default_rng(11)
    deltas = [rng.standard_normal((6, 4)) for _ in range(3)]
    bundle = bundle_from_arrays(deltas)
    assert_close(IsoC(scaling=1.5).merge(bundle).delta, ref_iso_c(deltas, 1.5))
    assert_close(IsoCTS().merge(bundle).delta, ref_iso_cts(deltas, 0.8))
    assert_close(TSVM(scaling=0.7).merge(bundle).delta, ref_tsv_m(deltas, 0.7))
    assert_close(
        TSVM(rank_split="balanced").merge(bundle).delta, ref_tsv_m(deltas, 1.0, "balanced")
    )


def test_tsv_m_with_more_tasks_than_rank_gives_zero_under_floor_split():
    """T > r: int(r/T) = 0 slots per task, as in the original code."""
    rng = np.random.default_rng(0)
    bundle = bundle_from_arrays([rng.standard_normal((2, 5)) for _ in range(3)])
    out = TSVM().merge(bundle)
    assert torch.count_nonzero(out.delta) == 0
    assert out.records[-1].data["task_ranks"] == [0, 0, 0]
    assert torch.count_nonzero(TSVM(rank_split="balanced").merge(bundle).delta) > 0


@pytest.mark.parametrize("component", SPECTRAL)
def test_non_matrix_tensors_use_the_fallback_times_scaling(component):
    """Biases and a (1, n) row go to the fallback; its delta is multiplied by scaling."""
    rng = np.random.default_rng(2)
    for shape in [(5,), (), (1, 4)]:
        tvs = [rng.standard_normal(shape) for _ in range(3)]
        bundle = bundle_from_arrays(tvs, name="encoder.norm.bias")
        out = component(scaling=2.0).merge(bundle)
        assert_close(out.delta, 2.0 * np.mean(tvs, axis=0), rtol=1e-14)
        assert out.records[-1].data["fallback"] == "average"
        summed = component(scaling=2.0, fallback=TaskArithmetic(scaling=1.0)).merge(bundle)
        assert_close(summed.delta, 2.0 * np.sum(tvs, axis=0), rtol=1e-14)


def test_fallback_from_a_config_name_and_its_validation():
    registry = build_registry()
    merger = registry.create("merger", "iso_c", fallback={"name": "task_arithmetic", "scaling": 1})
    assert merger.fallback == TaskArithmetic(scaling=1)
    assert IsoC().to_config()["fallback"] == WeightAveraging().to_config()
    with pytest.raises(InvalidParameterError, match="'fallback' parameter of TSVM must be"):
        TSVM(fallback="average")


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: IsoCTS(common_space_fraction=1.5), "'common_space_fraction' parameter of IsoCTS"),
        (lambda: TSVM(rank_split="ceil"), "'rank_split' parameter of TSVM must be one of"),
        (lambda: IsoC(scaling=float("inf")), "'scaling' parameter of IsoC"),
    ],
)
def test_bad_parameters_are_rejected_by_name(factory, match):
    with pytest.raises(InvalidParameterError, match=match):
        factory()


@pytest.mark.parametrize("component", SPECTRAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_is_kept_and_half_precision_goes_through_float32(component, dtype):
    rng = np.random.default_rng(5)
    bundle = bundle_from_arrays([rng.standard_normal((6, 5)) for _ in range(2)])
    low = bundle.map_tensors(lambda x: x.to(dtype))
    out = component().merge(low).delta
    assert out.dtype == dtype
    reference = component().merge(bundle).delta
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert_close(out.to(torch.float64), reference.numpy(), rtol=tol)
