"""``pactframe.MatrixMerger`` (the public base of matrix mergers), the Merger default
``supports()`` for non-float tensors, and ``Merger.linear_scaling``."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest
import torch
from pactframe_plugins.mergers.average import WeightAveraging
from pactframe_plugins.mergers.ties import TIES
from pactframe_plugins.mergers.tsv_m import TSVM

from pactframe import LayerBundle, MatrixMerger, MergedTensor, Record, build_registry
from pactframe.api import merge_state_dicts
from pactframe.errors import InputError, InvalidParameterError
from pactframe.matrix import fallback_field, from_linear_layout, linear_layout
from pactframe.testing import check_component, sample_bundles


@attrs.frozen
class TopSingular(MatrixMerger):
    """Test merger: ``scaling`` times the top singular triplet of ``sum_t Delta_t``."""

    name: ClassVar[str] = "test_top_singular"

    def merge_matrix(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        summed = linear_layout(torch.stack(bundle.task_vectors).sum(0), bundle.input_axis)
        U, S, Vh = torch.linalg.svd(summed, full_matrices=False)
        top = S[0] * torch.outer(U[:, 0], Vh[0])
        delta = from_linear_layout(self.scaling * top, bundle.input_axis)
        return MergedTensor(delta, records=(Record(self.name, {"rule": "top"}),))


@attrs.frozen
class TopSingularWithMean(TopSingular):
    """The same with the mean of the task vectors as its default fallback."""

    name: ClassVar[str] = "test_top_singular_mean"

    fallback: Any = fallback_field(WeightAveraging())


@attrs.frozen
class SquaresScaling(TopSingular):
    """Broken: claims a linear ``scaling`` but squares it."""

    name: ClassVar[str] = "test_squares_scaling"

    def merge_matrix(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        out = super().merge_matrix(bundle, state)
        return attrs.evolve(out, delta=self.scaling * out.delta)


def test_a_third_party_matrix_merger_passes_the_contract_checks():
    check_component(TopSingular)
    check_component(TopSingularWithMean(scaling=0.7))


def test_without_a_fallback_non_matrix_tensors_are_declined_and_refused():
    weight, bias = sample_bundles(num_tasks=2)
    merger = TopSingular()
    assert merger.supports(weight) is None
    reason = merger.supports(bias)
    assert reason is not None and "no fallback" in reason and "[8]" in reason
    with pytest.raises(InputError, match="layers.0.linear.bias"):
        merger.merge(bias)


def test_the_fallback_gets_non_matrix_tensors_times_scaling():
    weight, bias = sample_bundles(num_tasks=2)
    merger = TopSingularWithMean(scaling=2.0)
    assert merger.supports(bias) is None
    out = merger.merge(bias)
    mean = (bias.task_vectors[0] + bias.task_vectors[1]) / 2
    torch.testing.assert_close(out.delta, 2.0 * mean, rtol=1e-12, atol=0)
    assert out.records[-1].data == {
        "rule": "fallback",
        "fallback": "average",
        "reason": "not a matrix",
    }
    # the matrix path is the subclass's: rank one, scaled
    delta = merger.merge(weight).delta
    assert int(torch.linalg.matrix_rank(delta)) == 1
    summed = weight.task_vectors[0] + weight.task_vectors[1]
    assert float(torch.linalg.matrix_norm(delta, ord=2)) == pytest.approx(
        2.0 * float(torch.linalg.matrix_norm(summed, ord=2)), rel=1e-12
    )


def test_transposed_layout_round_trip():
    w = torch.arange(6.0).reshape(2, 3)
    assert linear_layout(w, 1) is w
    assert torch.equal(linear_layout(w, 0), w.T)
    back = from_linear_layout(linear_layout(w, 0), 0)
    assert torch.equal(back, w) and back.is_contiguous()


def test_check_component_catches_a_scaling_that_is_not_linear():
    with pytest.raises(AssertionError, match="not 2.5 times the merge with scaling=1.0"):
        check_component(SquaresScaling)


def test_linear_scaling_must_name_a_parameter():
    @attrs.frozen
    class Misnamed(TopSingular):
        name: ClassVar[str] = "test_misnamed"
        linear_scaling: ClassVar[str | None] = "alpha"

    from pactframe.testing.checks import check_merger_linear_scaling

    with pytest.raises(AssertionError, match="names 'alpha', which is not one of its parameters"):
        check_merger_linear_scaling(Misnamed())


def test_the_builtin_svd_mergers_are_matrix_mergers():
    registry = build_registry()
    for name in ("tsv_m", "iso_c", "iso_cts"):
        cls = registry.get("merger", name)
        assert issubclass(cls, MatrixMerger), name
        params = [p.name for p in cls.parameters()]
        assert params[:4] == ["scaling", "fallback", "decomposer", "route"], (name, params)
        assert isinstance(cls().fallback, WeightAveraging)


def test_a_null_fallback_from_a_config_declines_biases():
    registry = build_registry()
    tsv = registry.build("merger", {"name": "tsv_m", "fallback": None})
    assert isinstance(tsv, TSVM) and tsv.fallback is None
    assert tsv.supports(sample_bundles()[1]) is not None
    assert tsv.to_config()["fallback"] is None
    with pytest.raises(InvalidParameterError, match="must be a merger"):
        TSVM(fallback=3)
    with pytest.raises(InvalidParameterError, match="without a whole-model prepass"):
        TSVM(fallback=TIES(trim_scope="global"))


def test_a_null_fallback_sends_biases_to_the_top_level_fallback():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g)}
    models = {
        t: {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        for t in ("a", "b")
    }
    config = {
        "merger": {"name": "tsv_m", "fallback": None, "scaling": 2.0},
        "fallback": {"name": "task_arithmetic", "scaling": 0.5},
        "compute_dtype": "float64",
    }
    out = merge_state_dicts(base, models, config)
    handlers = {e["name"]: e["handler"] for e in out.report["tensors"]}
    assert handlers == {"w": "recipe", "b": "fallback"}
    expected = base["b"].double() + 0.5 * sum(
        m["b"].double() - base["b"].double() for m in models.values()
    )
    torch.testing.assert_close(out.state_dict["b"].double(), expected, rtol=1e-6, atol=1e-6)


def test_every_registered_merger_declines_integer_buffers():
    """The Merger default supports() (one rule for every merger); the plan copies them."""
    buffer = LayerBundle(
        name="embeddings.position_ids",
        base=torch.arange(4),
        task_vectors=[torch.zeros(4, dtype=torch.int64)] * 2,
        task_names=["a", "b"],
    )
    for entry in build_registry().entries("merger"):
        merger = entry.cls()
        if merger.exact_models not in (None, 2):
            continue
        reason = merger.supports(buffer)
        assert reason is not None and "int64" in reason, entry.name
