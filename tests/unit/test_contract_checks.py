"""``pactframe.testing.check_component``: every registered component passes it,
and each check catches the defect it exists for.

The first test is parametrized over the installed registry, so every plugin any
issue registers through the entry points is checked without editing this file.
The broken components below are module-level classes (the pickling check needs
importable classes); each one breaks exactly one rule.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest
import torch

from pactframe import (
    Decomposer,
    Evaluator,
    MergedTensor,
    Merger,
    ModelEvaluator,
    Preprocessor,
    Record,
    TensorEvaluator,
    param,
)
from pactframe.contracts import evaluator_level
from pactframe.errors import InputError, PactframeError
from pactframe.linalg import as_working
from pactframe.registry import build_registry
from pactframe.testing import check_component, sample_bundles
from pactframe.types import Factorization


def _registered() -> list[Any]:
    try:
        entries = build_registry().entries()
    except PactframeError as exc:  # a broken plugin must fail the run, not vanish
        return [pytest.param(exc, id="registry-build-failed")]
    return [pytest.param(e, id=f"{e.kind}:{e.name}") for e in entries]


@pytest.mark.parametrize("entry", _registered())
def test_every_registered_component_passes_the_contract_checks(entry, request):
    if isinstance(entry, Exception):
        raise entry
    if entry.kind == "executor" and entry.name == "ray":
        request.getfixturevalue("ray_cluster")  # one real local Ray for the whole session
    check_component(entry.cls)


def test_the_three_builtin_decomposers_are_among_the_checked():
    ids = {p.id for p in _registered()}
    assert {"decomposer:exact_svd", "decomposer:randomized_svd", "decomposer:co_svd"} <= ids


def test_check_component_accepts_an_instance():
    from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD

    check_component(RandomizedSVD(oversampling=3, power_iterations=0, seed=5))


def expect_failure(component: Any, fragment: str) -> None:
    with pytest.raises(AssertionError) as info:
        check_component(component)
    assert fragment in str(info.value), f"another check fired: {info.value}"


# ================================================================== mergers
@attrs.frozen
class MeanMerger(Merger):
    """Elementwise mean of the task vectors (correct)."""

    name: ClassVar[str] = "test_mean"
    scale: float = param(1.0)

    def merge(self, bundle: Any, state: Any = None) -> MergedTensor:
        return MergedTensor(self.scale * torch.stack(bundle.task_vectors).mean(0))


@attrs.define
class MutableMerger(Merger):
    name: ClassVar[str] = "mutable"
    scale: float = 1.0

    def merge(self, bundle, state=None):
        return MergedTensor(torch.stack(bundle.task_vectors).mean(0))


class PlainMerger(Merger):
    name: ClassVar[str] = "plain"

    def merge(self, bundle, state=None):
        return MergedTensor(bundle.task_vectors[0])


@attrs.frozen
class NeedsAlpha(MeanMerger):
    name: ClassVar[str] = "needs_alpha"
    alpha: float = attrs.field(kw_only=True)


@attrs.frozen
class Shouty(MeanMerger):
    name: ClassVar[str] = "MeanMerger"


@attrs.frozen
class TrailingNewline(MeanMerger):
    name: ClassVar[str] = "mean\n"  # what re.match with "$" would let through


@attrs.frozen
class LossyConfig(MeanMerger):
    name: ClassVar[str] = "lossy"

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "scale": 1.0}


@attrs.frozen
class HoldsLambda(MeanMerger):
    name: ClassVar[str] = "holds_lambda"
    fn: Any = param(lambda x: x)


@attrs.frozen
class InPlace(MeanMerger):
    name: ClassVar[str] = "in_place"

    def merge(self, bundle, state=None):
        bundle.task_vectors[0].mul_(2.0)
        return MergedTensor(bundle.task_vectors[0].clone())


@attrs.frozen
class Flattening(MeanMerger):
    name: ClassVar[str] = "flattening"

    def merge(self, bundle, state=None):
        return MergedTensor(torch.stack(bundle.task_vectors).mean(0).reshape(-1))


@attrs.frozen
class Noisy(MeanMerger):
    name: ClassVar[str] = "noisy"

    def merge(self, bundle, state=None):
        noise = torch.randn(bundle.base.shape, dtype=bundle.base.dtype)  # global RNG
        return MergedTensor(torch.stack(bundle.task_vectors).mean(0) + noise)


@attrs.frozen
class ReturnsTensor(MeanMerger):
    name: ClassVar[str] = "returns_tensor"

    def merge(self, bundle, state=None):
        return torch.stack(bundle.task_vectors).mean(0)


@attrs.frozen
class VectorsOnly(MeanMerger):
    name: ClassVar[str] = "vectors_only"

    def supports(self, bundle):
        return None if bundle.base.ndim == 1 else "only 1-D tensors"


@attrs.frozen
class PeeksAtValues(MeanMerger):
    """supports() reads values: it raises on the plan's shape-only meta tensors."""

    name: ClassVar[str] = "peeks_at_values"

    def supports(self, bundle):
        return None if float(bundle.base.abs().max()) < 1e6 else "huge weights"


@attrs.frozen
class AnswersByDevice(MeanMerger):
    """supports() takes on real tensors but refuses the same shapes on meta tensors."""

    name: ClassVar[str] = "answers_by_device"

    def supports(self, bundle):
        return "no meta tensors" if bundle.base.is_meta else None


@attrs.frozen
class TensorRecord(MeanMerger):
    name: ClassVar[str] = "tensor_record"

    def merge(self, bundle, state=None):
        out = super().merge(bundle, state)
        return MergedTensor(out.delta, records=[Record("x", {"norm": out.delta.norm()})])


@attrs.frozen
class GlobalScale(MeanMerger):
    """Two-pass: divides by the number of tensors seen in the prepass (correct)."""

    name: ClassVar[str] = "global_scale"
    needs_prepass: ClassVar[bool] = True

    def prepare(self, bundles):
        return sum(1 for _ in bundles)

    def merge(self, bundle, state=None):
        assert state == 2, f"expected the prepass state 2, got {state!r}"
        return MergedTensor(torch.stack(bundle.task_vectors).mean(0) / state)


@attrs.frozen
class NotAComponent:
    name: ClassVar[str] = "orphan"


def test_a_correct_merger_passes():
    check_component(MeanMerger)
    check_component(MeanMerger(scale=-2.5))


def test_a_two_pass_merger_gets_its_prepass_state():
    check_component(GlobalScale)


def test_catches_a_class_that_is_not_frozen():
    expect_failure(MutableMerger, "must be frozen")


def test_catches_a_class_that_is_not_attrs():
    expect_failure(PlainMerger, "must be an attrs class")


def test_catches_a_required_parameter_without_default():
    expect_failure(NeedsAlpha, "must be constructible with no arguments")
    check_component(NeedsAlpha(alpha=1.0))  # an instance is enough


def test_catches_a_name_that_is_not_snake_case():
    expect_failure(Shouty, "snake_case")
    expect_failure(TrailingNewline, "snake_case")


def test_catches_a_to_config_that_does_not_rebuild_the_instance():
    expect_failure(LossyConfig(scale=2.0), "to_config()")


def test_catches_an_unpicklable_component():
    expect_failure(HoldsLambda, "cannot be pickled")


def test_catches_an_object_of_no_contract():
    expect_failure(NotAComponent(), "must subclass one of")


def test_catches_a_merger_that_mutates_its_input():
    expect_failure(InPlace, "mutated its input")


def test_catches_a_merger_with_the_wrong_output_shape():
    expect_failure(Flattening, "merged delta (80,) != base (10, 8)")


def test_catches_a_non_deterministic_merger():
    expect_failure(Noisy, "not deterministic")


def test_catches_a_merger_returning_the_wrong_type():
    expect_failure(ReturnsTensor, "must return a MergedTensor")


def test_catches_a_merger_that_refuses_matrices():
    expect_failure(VectorsOnly, "refuses a 2-D weight: only 1-D tensors")


def test_catches_a_supports_that_reads_values():
    expect_failure(PeeksAtValues, "supports() raised")
    expect_failure(PeeksAtValues, "shape and dtype alone")


def test_catches_a_supports_that_answers_otherwise_on_meta_tensors():
    expect_failure(AnswersByDevice, "answers 'no meta tensors' on meta tensors but None")


def test_catches_records_that_are_not_json():
    with pytest.raises(TypeError, match="JSON serializable"):
        check_component(TensorRecord)


# ================================================================== preprocessors
@attrs.frozen
class Halve(Preprocessor):
    """Halves every task vector (correct)."""

    name: ClassVar[str] = "test_halve"

    def preprocess(self, bundle, state=None):
        return bundle.with_task_vectors([0.5 * tv for tv in bundle.task_vectors])


@attrs.frozen
class MovesBase(Halve):
    name: ClassVar[str] = "moves_base"

    def preprocess(self, bundle, state=None):
        return attrs.evolve(super().preprocess(bundle), base=bundle.base + 1.0)


@attrs.frozen
class Downcasts(Halve):
    name: ClassVar[str] = "downcasts"

    def preprocess(self, bundle, state=None):
        return bundle.with_task_vectors([tv.to(torch.float32) for tv in bundle.task_vectors])


@attrs.frozen
class ZeroesInPlace(Halve):
    name: ClassVar[str] = "zeroes_in_place"

    def preprocess(self, bundle, state=None):
        for tv in bundle.task_vectors:
            tv.zero_()
        return bundle


@attrs.frozen
class MakesNaN(Halve):
    name: ClassVar[str] = "makes_nan"

    def preprocess(self, bundle, state=None):
        return bundle.with_task_vectors([tv * float("nan") for tv in bundle.task_vectors])


def test_a_correct_preprocessor_passes():
    check_component(Halve)


def test_catches_a_preprocessor_that_changes_the_base():
    expect_failure(MovesBase, "must not change the base")


def test_catches_a_preprocessor_that_changes_the_dtype():
    expect_failure(Downcasts, "came back as (10, 8)/torch.float32")


def test_catches_a_preprocessor_that_mutates_its_input():
    expect_failure(ZeroesInPlace, "mutated its input")


def test_catches_a_preprocessor_producing_nan():
    expect_failure(MakesNaN, "non-finite")


# ================================================================== decomposers
@attrs.frozen
class PlainSVD(Decomposer):
    """torch.linalg.svd, truncated (correct)."""

    name: ClassVar[str] = "test_svd"

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        U, S, Vh = torch.linalg.svd(as_working(matrix), full_matrices=False)
        f = Factorization(U, S, Vh)
        return f if rank is None else f.truncate(rank)


@attrs.frozen
class IgnoresRank(PlainSVD):
    name: ClassVar[str] = "ignores_rank"

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        return super().decompose(matrix, None)


@attrs.frozen
class Ascending(PlainSVD):
    name: ClassVar[str] = "ascending"

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        f = super().decompose(matrix, rank)
        return Factorization(f.U.flip(1), f.S.flip(0), f.Vh.flip(0))


@attrs.frozen
class DropsScale(PlainSVD):
    name: ClassVar[str] = "drops_scale"

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        f = super().decompose(matrix, rank)
        return Factorization(f.U, torch.ones_like(f.S), f.Vh)


@attrs.frozen
class KeepsHalf(PlainSVD):
    name: ClassVar[str] = "keeps_half"

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        f = super().decompose(matrix, rank)
        return Factorization(f.U.to(matrix.dtype), f.S.to(matrix.dtype), f.Vh.to(matrix.dtype))


@attrs.frozen
class GlobalRng(PlainSVD):
    name: ClassVar[str] = "global_rng"

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        if rank is None:  # exact at full rank, a noisy sketch when truncating
            return super().decompose(matrix, None)
        noise = 1e-3 * torch.randn(matrix.shape).to(matrix.dtype)  # ignores the generator
        return super().decompose(matrix + noise, rank)


@attrs.frozen
class ClaimsContext(PlainSVD):
    name: ClassVar[str] = "claims_context"
    requires_covariance: ClassVar[bool] = True


@attrs.frozen
class Whitened(PlainSVD):
    name: ClassVar[str] = "whitened"
    requires_covariance: ClassVar[bool] = True

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        if covariance is None:
            raise InputError("whitened needs a covariance")
        return super().decompose(matrix, rank)


def test_a_correct_decomposer_passes():
    check_component(PlainSVD)


def test_a_context_decomposer_that_raises_input_error_passes():
    check_component(Whitened)


def test_catches_a_decomposer_that_ignores_the_rank():
    expect_failure(IgnoresRank, "rank=3 must give a rank-3 factorization")


def test_catches_ascending_singular_values():
    expect_failure(Ascending, "sorted descending")


def test_catches_a_wrong_reconstruction():
    expect_failure(DropsScale, "Full-rank reconstruction is off")


def test_catches_half_precision_returned_as_half():
    expect_failure(KeepsHalf, "torch.float16 input gave torch.float16 factors")


def test_catches_a_decomposer_that_uses_the_global_rng():
    expect_failure(GlobalRng, "Same seed, different result")


def test_catches_a_context_decomposer_that_accepts_no_covariance():
    expect_failure(ClaimsContext, "requires a covariance but accepted none")


# ================================================================== evaluators
@attrs.frozen
class DeltaNorm(Evaluator):
    """Frobenius norm of each task vector (correct)."""

    name: ClassVar[str] = "test_delta_norm"

    def evaluate_tensor(self, original, processed, merged):
        return {t: float(tv.norm()) for t, tv in zip(original.task_names, original.task_vectors)}


@attrs.frozen
class Sideways(DeltaNorm):
    name: ClassVar[str] = "sideways"
    level: ClassVar[str] = "layer"


@attrs.frozen
class TensorValued(DeltaNorm):
    name: ClassVar[str] = "tensor_valued"

    def evaluate_tensor(self, original, processed, merged):
        return {"norm": original.task_vectors[0].norm()}


@attrs.frozen
class MergedNorm(TensorEvaluator):
    """Norm of the merged delta (correct: handles the dry run, merged=None)."""

    name: ClassVar[str] = "test_merged_norm"

    def evaluate_tensor(self, original, processed, merged):
        return {"norm": None if merged is None else float(merged.delta.norm())}


@attrs.frozen
class AssumesMerged(TensorEvaluator):
    """Broken: fails in a dry run."""

    name: ClassVar[str] = "test_assumes_merged"

    def evaluate_tensor(self, original, processed, merged):
        return {"norm": float(merged.delta.norm())}


@attrs.frozen
class IgnoresMerged(TensorEvaluator):
    """Broken: never looks at ``merged`` but returns a tensor only when it is given."""

    name: ClassVar[str] = "test_ignores_merged"

    def evaluate_tensor(self, original, processed, merged):
        return {"norm": merged.delta.norm() if merged is not None else 0.0}


@attrs.frozen
class Counts(ModelEvaluator):
    name: ClassVar[str] = "test_counts"

    def evaluate_model(self, model, tasks):
        return {"tasks": len(tasks)}


@attrs.frozen
class LegacyModelLevel(Evaluator):
    """Pre-split form: level = "model" on the common base, but no evaluate_model."""

    name: ClassVar[str] = "test_legacy_model"
    level: ClassVar[str] = "model"


@attrs.frozen
class ModelButTensorLevel(Counts):
    name: ClassVar[str] = "test_model_but_tensor"
    level: ClassVar[str] = "tensor"


def test_a_correct_evaluator_passes():
    check_component(DeltaNorm)  # the pre-split form (a direct Evaluator subclass) still passes
    check_component(MergedNorm)
    check_component(Counts)
    assert [evaluator_level(c) for c in (DeltaNorm, MergedNorm, Counts, LegacyModelLevel)] == [
        "tensor",
        "tensor",
        "model",
        "model",
    ]


def test_tensor_evaluators_are_called_with_and_without_a_merged_tensor():
    with pytest.raises(AttributeError, match="NoneType"):
        check_component(AssumesMerged)
    with pytest.raises(TypeError, match="JSON serializable"):
        check_component(IgnoresMerged)


def test_catches_a_model_level_evaluator_without_evaluate_model():
    expect_failure(LegacyModelLevel, "model-level evaluator without evaluate_model")
    expect_failure(ModelButTensorLevel, "is a model-level evaluator but sets level = 'tensor'")


def test_the_evaluator_contracts_are_abstract():
    @attrs.frozen
    class Empty(TensorEvaluator):
        name: ClassVar[str] = "test_empty"

    with pytest.raises(TypeError, match="abstract"):
        Empty()


def test_catches_an_evaluator_with_a_bad_level():
    expect_failure(Sideways, "level must be 'tensor' or 'model'; got 'layer'")


def test_catches_an_evaluator_returning_tensors():
    with pytest.raises(TypeError, match="JSON serializable"):
        check_component(TensorValued)


# ================================================================== the check inputs
def test_sample_bundles_are_what_the_checks_document():
    weight, bias = sample_bundles(num_tasks=2)
    assert weight.base.shape == (10, 8) and bias.base.shape == (8,)
    assert weight.num_tasks == 2 and weight.covariance(1).shape == (8, 8)
    assert bool((torch.linalg.eigvalsh(weight.covariance(0)) > 0).all())
    assert bias.covariances is None
    again = sample_bundles(num_tasks=2)[0]
    assert torch.equal(weight.base, again.base)  # deterministic inputs
