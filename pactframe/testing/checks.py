"""Reusable contract checks for plugin authors (like scikit-learn's check_estimator).

    from pactframe.testing import check_component
    check_component(MyMerger)          # raises AssertionError naming the failed check

Every check builds its own small float64 inputs (a 10x8 matrix tensor, a 1-D
bias, three tasks, SPD covariances), so it needs nothing from the caller but
a class (default-constructible) or an instance.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch

from pactframe.contracts import (
    CONTRACTS,
    EVALUATOR_LEVELS,
    Component,
    Decomposer,
    Evaluator,
    Executor,
    Merger,
    Preprocessor,
    evaluator_level,
    splits_prepass,
)
from pactframe.errors import InputError
from pactframe.registry import is_valid_name
from pactframe.types import Factorization, LayerBundle, MergedTensor


def _instance(component: type[Component] | Component) -> Component:
    if not isinstance(component, type):  # an instance (of a Component or not)
        return component
    try:
        return component()
    except TypeError as exc:
        raise AssertionError(
            f"{component.__name__} must be constructible with no arguments (every parameter "
            f"needs a default) for the contract checks; pass an instance instead ({exc})."
        ) from exc


def sample_bundles(
    seed: int = 0, num_tasks: int = 3, dtype: torch.dtype = torch.float64
) -> list[LayerBundle]:
    """A 10x8 weight and a length-8 bias for ``num_tasks`` tasks, with covariances."""
    rng = np.random.default_rng(seed)
    names = tuple(f"task{i}" for i in range(num_tasks))

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(dtype)

    covs = []
    for _ in range(num_tasks):
        x = rng.standard_normal((64, 8))
        covs.append(t(x.T @ x / 64))
    weight = LayerBundle(
        name="layers.0.linear.weight",
        base=t(rng.standard_normal((10, 8))),
        task_vectors=[t(0.1 * rng.standard_normal((10, 8))) for _ in range(num_tasks)],
        task_names=names,
        covariances=covs,
        seed=1234,
    )
    bias = LayerBundle(
        name="layers.0.linear.bias",
        base=t(rng.standard_normal(8)),
        task_vectors=[t(0.1 * rng.standard_normal(8)) for _ in range(num_tasks)],
        task_names=names,
        covariances=None,
        seed=5678,
    )
    return [weight, bias]


def _clone_bundle(b: LayerBundle) -> LayerBundle:
    return b.map_tensors(lambda x: x.clone())


def _same_bundle_tensors(a: LayerBundle, b: LayerBundle) -> bool:
    if not torch.equal(a.base, b.base):
        return False
    return all(torch.equal(x, y) for x, y in zip(a.task_vectors, b.task_vectors))


# ---------------------------------------------------------------- common checks
def check_component(component: type[Component] | Component) -> None:
    """Run the common checks and those of the component's contract."""
    inst = _instance(component)
    cls = type(inst)
    contract = CONTRACTS.get(getattr(cls, "kind", ""), None)
    assert contract is not None and isinstance(inst, contract), (
        f"{cls.__name__}.kind is {getattr(cls, 'kind', None)!r}; it must subclass one of "
        "Decomposer, Preprocessor, Merger, Evaluator, Executor."
    )
    for check in COMMON_CHECKS + KIND_CHECKS[cls.kind]:
        check(inst)


def check_is_frozen_attrs(inst: Component) -> None:
    """Components are frozen attrs classes whose fields are their hyperparameters."""
    cls = type(inst)
    assert attrs.has(cls), f"{cls.__name__} must be an attrs class (@attrs.frozen)."
    fields = [f for f in attrs.fields(cls) if f.init]
    if fields:
        try:
            setattr(inst, fields[0].name, getattr(inst, fields[0].name))
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            raise AssertionError(f"{cls.__name__} must be frozen (@attrs.frozen).")


def check_name(inst: Component) -> None:
    """``name`` is a snake_case class attribute."""
    name = getattr(type(inst), "name", None)
    assert is_valid_name(name), (
        f"{type(inst).__name__}.name must be a snake_case string; got {name!r}."
    )


def check_parameters_listed(inst: Component) -> None:
    """``parameters()`` lists every init field, and ``to_config`` rebuilds an equal instance."""
    cls: Any = type(inst)
    listed = {p.name for p in cls.parameters()}
    fields = {f.name for f in attrs.fields(cls) if f.init and not f.name.startswith("_")}
    assert listed == fields, f"{cls.__name__}.parameters() lists {listed}, fields are {fields}."
    config = inst.to_config()
    assert config.pop("name") == cls.name
    rebuilt = cls(**{k: _rebuild(getattr(inst, k), v) for k, v in config.items()})
    assert rebuilt == inst, f"{cls.__name__}(**to_config()) differs from the instance."


def _rebuild(original: Any, value: Any) -> Any:
    return original if isinstance(original, Component) else value


def check_picklable(inst: Component) -> None:
    """Instances survive pickling (worker processes) and compare equal afterwards."""
    try:
        clone = pickle.loads(pickle.dumps(inst))
    except Exception as exc:  # pickle raises several types (PicklingError, AttributeError...)
        raise AssertionError(
            f"{type(inst).__name__} cannot be pickled, so it cannot be sent to worker "
            f"processes: {exc}. Define the class at module level and keep its fields "
            "picklable (no lambdas, open files or locks)."
        ) from exc
    assert clone == inst, f"{type(inst).__name__} does not survive a pickle round trip."


def check_hashable(inst: Component) -> None:
    """Frozen components are hashable (usable as cache keys)."""
    hash(inst)


COMMON_CHECKS: list[Callable[[Any], None]] = [
    check_is_frozen_attrs,
    check_name,
    check_parameters_listed,
    check_picklable,
    check_hashable,
]


# ---------------------------------------------------------------- decomposers
def _decompose(
    inst: Decomposer, a: torch.Tensor, rank: int | None, cov: torch.Tensor | None
) -> Factorization:
    g = torch.Generator().manual_seed(7)
    return inst.decompose(
        a, rank, covariance=cov if inst.requires_covariance else None, generator=g
    )


def check_decomposer_output(inst: Decomposer) -> None:
    """Shapes, descending non-negative S, truncation, untouched input, full-rank reconstruction."""
    bundle = sample_bundles()[0]
    a = bundle.finetuned(0)
    cov = bundle.covariance(0)
    a_copy = a.clone()
    f = _decompose(inst, a, None, cov)
    assert isinstance(f, Factorization), (
        f"{type(inst).__name__}.decompose must return a Factorization."
    )
    assert torch.equal(a, a_copy), "decompose() mutated its input."
    assert f.shape == tuple(a.shape), f"Factorization shape {f.shape} != input {tuple(a.shape)}."
    assert f.rank == min(a.shape), f"rank=None must keep min(m, n) components; got {f.rank}."
    assert bool((f.S[:-1] >= f.S[1:] - 1e-12).all()), "S must be sorted descending."
    assert bool((f.S >= 0).all()), "S must be non-negative."
    err = torch.linalg.matrix_norm(f.reconstruct().to(a.dtype) - a) / torch.linalg.matrix_norm(a)
    assert float(err) < 1e-6, f"Full-rank reconstruction is off by a relative {float(err):.2e}."
    f3 = _decompose(inst, a, 3, cov)
    assert f3.rank == 3 and f3.shape == tuple(a.shape), "rank=3 must give a rank-3 factorization."
    f_big = _decompose(inst, a, 10_000, cov)
    assert f_big.rank == min(a.shape), "A rank above min(m, n) must be clipped."


def check_decomposer_dtypes(inst: Decomposer) -> None:
    """float32 in gives float32 out; half precision is computed in float32."""
    bundle = sample_bundles()[0]
    cov = bundle.covariance(0)
    for dtype, expected in (
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ):
        f = _decompose(
            inst, bundle.finetuned(0).to(dtype), 4, None if cov is None else cov.to(torch.float32)
        )
        assert f.S.dtype == expected, (
            f"{dtype} input gave {f.S.dtype} factors; expected {expected}."
        )


def check_decomposer_deterministic(inst: Decomposer) -> None:
    """The same generator seed gives the same factorization."""
    bundle = sample_bundles()[0]
    a, cov = bundle.finetuned(0), bundle.covariance(0)
    f1, f2 = _decompose(inst, a, 4, cov), _decompose(inst, a, 4, cov)
    assert torch.equal(f1.reconstruct(), f2.reconstruct()), "Same seed, different result."


def check_decomposer_requires_covariance(inst: Decomposer) -> None:
    """A context-aware decomposer called without a covariance raises InputError."""
    if not inst.requires_covariance:
        return
    a = sample_bundles()[0].finetuned(0)
    try:
        inst.decompose(a, 2)
    except InputError:
        return
    raise AssertionError(f"{type(inst).__name__} requires a covariance but accepted none.")


# ---------------------------------------------------------------- preprocessors
def _prepared(inst: Preprocessor | Merger, bundles: list[LayerBundle]) -> Any:
    return inst.prepare(iter(bundles)) if inst.needs_prepass else None


def check_preprocessor_output(inst: Preprocessor) -> None:
    """Same names, shapes, dtypes, base; inputs untouched; deterministic; T = 1 works."""
    for num_tasks in (3, 1):
        bundles = sample_bundles(num_tasks=num_tasks)
        state = _prepared(inst, bundles)
        for bundle in bundles:
            before = _clone_bundle(bundle)
            out = inst.preprocess(bundle, state)
            assert isinstance(out, LayerBundle), "preprocess() must return a LayerBundle."
            assert _same_bundle_tensors(bundle, before), "preprocess() mutated its input bundle."
            assert out.name == bundle.name and out.task_names == bundle.task_names
            assert torch.equal(out.base, bundle.base), "preprocess() must not change the base."
            for tv, orig in zip(out.task_vectors, bundle.task_vectors):
                assert tv.shape == orig.shape and tv.dtype == orig.dtype, (
                    f"{bundle.name}: task vector {tuple(orig.shape)}/{orig.dtype} came back "
                    f"as {tuple(tv.shape)}/{tv.dtype}."
                )
                assert bool(torch.isfinite(tv).all()), f"{bundle.name}: non-finite output."
            again = inst.preprocess(bundle, state)
            assert _same_bundle_tensors(out, again), f"{bundle.name}: not deterministic."
            _check_records_json(out.records)


def _check_records_json(records: Any) -> None:
    for record in records:
        json.dumps(dict(record.data))


# ---------------------------------------------------------------- mergers
def check_merger_output(inst: Merger) -> None:
    """A MergedTensor shaped like the base, finite, deterministic; inputs untouched; T = 1 works
    (only T = ``exact_models`` for a merger that fixes the number of models)."""
    for num_tasks in (3, 1):
        if getattr(inst, "exact_models", None) not in (None, num_tasks):
            continue
        bundles = sample_bundles(num_tasks=num_tasks)
        state = _prepared(inst, bundles)
        for bundle in bundles:
            if inst.supports(bundle) is not None:
                continue
            before = _clone_bundle(bundle)
            out = inst.merge(bundle, state)
            assert isinstance(out, MergedTensor), "merge() must return a MergedTensor."
            assert _same_bundle_tensors(bundle, before), "merge() mutated its input bundle."
            assert out.delta.shape == bundle.base.shape, (
                f"{bundle.name}: merged delta {tuple(out.delta.shape)} != "
                f"base {tuple(bundle.base.shape)}."
            )
            assert bool(torch.isfinite(out.delta).all()), f"{bundle.name}: non-finite merge."
            again = inst.merge(bundle, state)
            assert torch.equal(out.delta, again.delta), f"{bundle.name}: not deterministic."
            if out.is_task_conditioned:
                assert out.task_names == bundle.task_names
                for name in bundle.task_names:
                    assert out.task_delta(name).shape == bundle.base.shape
            _check_records_json(out.records)


def check_merger_supports_matrix(inst: Merger) -> None:
    """Every merger takes a plain 2-D weight (non-matrix tensors may go to a fallback)."""
    reason = inst.supports(sample_bundles()[0])
    assert reason is None, f"{type(inst).__name__} refuses a 2-D weight: {reason}"


def check_merger_linear_scaling(inst: Merger) -> None:
    """A merger that names a ``linear_scaling`` parameter has it, and its delta (task
    deltas included) at ``2.5`` is 2.5 times the delta at ``1.0``."""
    param = type(inst).linear_scaling
    if param is None:
        return
    cls = type(inst)
    names = [p.name for p in cls.parameters()]
    assert param in names, (
        f"{cls.__name__}.linear_scaling names {param!r}, which is not one of its parameters "
        f"{names}."
    )
    evolve: Any = attrs.evolve  # components are attrs classes (check_is_frozen_attrs)
    one, scaled = evolve(inst, **{param: 1.0}), evolve(inst, **{param: 2.5})
    for num_tasks in (3, 1):
        if getattr(inst, "exact_models", None) not in (None, num_tasks):
            continue
        bundles = sample_bundles(num_tasks=num_tasks)
        state_one, state_scaled = _prepared(one, bundles), _prepared(scaled, bundles)
        for bundle in bundles:
            if one.supports(bundle) is not None:
                continue
            a, b = one.merge(bundle, state_one), scaled.merge(bundle, state_scaled)
            pairs = [(a.delta, b.delta)]
            if a.is_task_conditioned:
                pairs += [(a.task_delta(n), b.task_delta(n)) for n in bundle.task_names]
            for x, y in pairs:
                tol = 1e-9 * max(1.0, float(x.abs().max()) if x.numel() else 0.0)
                assert torch.allclose(y, 2.5 * x, rtol=1e-9, atol=tol), (
                    f"{bundle.name}: {cls.__name__} with {param}=2.5 is not 2.5 times the "
                    f"merge with {param}=1.0 (max difference "
                    f"{float((y - 2.5 * x).abs().max()):.3g}); its delta must be linear in "
                    f"{param!r}, or set linear_scaling = None."
                )


def _meta_bundle(bundle: LayerBundle) -> LayerBundle:
    def meta(x: torch.Tensor) -> torch.Tensor:
        return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")

    covs = None
    if bundle.covariances is not None:
        covs = [None if c is None else meta(c) for c in bundle.covariances]
    return attrs.evolve(
        bundle,
        base=meta(bundle.base),
        task_vectors=[meta(tv) for tv in bundle.task_vectors],
        covariances=covs,
    )


def check_merger_supports_meta(inst: Merger) -> None:
    """``supports()`` runs at plan time on shape-only meta tensors: it must not raise
    there, and it must give the same answer (takes / refuses) as on real values."""
    for num_tasks in (3, 1):
        for bundle in sample_bundles(num_tasks=num_tasks):
            try:
                on_meta = inst.supports(_meta_bundle(bundle))
            except Exception as exc:  # noqa: BLE001 - any exception fails the check
                raise AssertionError(
                    f"{type(inst).__name__}.supports() raised {type(exc).__name__}: {exc} on "
                    f"shape-only meta tensors ({bundle.name}, shape {tuple(bundle.base.shape)}); "
                    "the plan asks it there, so it must decide from shape and dtype alone."
                ) from exc
            on_values = inst.supports(bundle)
            assert (on_meta is None) == (on_values is None), (
                f"{type(inst).__name__}.supports() answers {on_meta!r} on meta tensors but "
                f"{on_values!r} on values for {bundle.name}; it must decide from shape and "
                "dtype alone."
            )


# ---------------------------------------------------------------- evaluators
def check_evaluator(inst: Evaluator) -> None:
    """A tensor-level (``TensorEvaluator``) or model-level (``ModelEvaluator``) evaluator
    that implements its method; tensor evaluators return JSON-serialisable data with and
    without a merged tensor (``merged=None``: a dry run)."""
    cls = type(inst)
    level = evaluator_level(inst)
    assert level in EVALUATOR_LEVELS, (
        f"level must be 'tensor' or 'model'; got {level!r}. Subclass "
        "pactframe.TensorEvaluator or pactframe.ModelEvaluator."
    )
    assert inst.level == level, (
        f"{cls.__name__} is a {level}-level evaluator but sets level = {inst.level!r}."
    )
    if level == "model":
        assert cls.evaluate_model is not Evaluator.evaluate_model, (
            f"{cls.__name__} is a model-level evaluator without evaluate_model(model, tasks)."
        )
        return
    assert cls.evaluate_tensor is not Evaluator.evaluate_tensor, (
        f"{cls.__name__} is a tensor-level evaluator without evaluate_tensor(original, "
        "processed, merged)."
    )
    for bundle in sample_bundles():
        merged = MergedTensor(torch.stack(bundle.task_vectors).mean(dim=0))
        for m in (None, merged):
            data = inst.evaluate_tensor(bundle, bundle, m)
            json.dumps(dict(data))


# ---------------------------------------------------------------- split prepass
def _outputs(inst: Preprocessor | Merger, bundle: LayerBundle, state: Any) -> list[torch.Tensor]:
    if isinstance(inst, Merger):
        if inst.supports(bundle) is not None:
            return []
        merged = inst.merge(bundle, state)
        return [merged.delta, *(merged.task_masks or ())]
    return list(inst.preprocess(bundle, state).task_vectors)


def check_prepass_split(inst: Preprocessor | Merger) -> None:
    """A split prepass is exact: ``prepare_reduce`` over ``prepare_map`` of every cut of the
    bundles into contiguous runs gives the same outputs, bit for bit, as ``prepare``."""
    if not inst.needs_prepass or not splits_prepass(inst):
        return
    second = [
        attrs.evolve(b, name=b.name.replace("layers.0", "layers.1")) for b in sample_bundles(1)
    ]
    bundles = sample_bundles() + second
    whole = inst.prepare(iter(bundles))
    expected = [_outputs(inst, b, whole) for b in bundles]
    n = len(bundles)
    cuts = [[bundles], [[b] for b in bundles], [bundles[:1], bundles[1:]], [bundles[:3], []]]
    cuts[-1].append(bundles[3:])
    for runs in cuts:
        state = inst.prepare_reduce([inst.prepare_map(iter(run)) for run in runs])
        for b, want in zip(bundles, expected):
            got = _outputs(inst, b, state)
            assert len(got) == len(want) and all(torch.equal(x, y) for x, y in zip(got, want)), (
                f"{type(inst).__name__}: the state from prepare_map/prepare_reduce over runs of "
                f"{[len(r) for r in runs]} of {n} bundles gives another output for "
                f"{b.name!r} than prepare() over all of them; the split must be exact."
            )


# ---------------------------------------------------------------- executors
class _Square:
    """A picklable task for the executor checks: ``unit -> unit * unit`` (ints)."""

    def __call__(self, unit: int) -> int:
        return unit * unit


def check_executor(inst: Executor) -> None:
    """``check()`` returns a list of strings; a runner from ``start()`` runs every unit
    exactly once through ``map`` and yields each ``(index, task(unit))`` once."""
    problems = inst.check()
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems), (
        f"{type(inst).__name__}.check() must return a list of strings; got {problems!r}."
    )
    assert not problems, f"{type(inst).__name__} is not usable here: {problems}"
    units = [3, 1, 4, 1, 5, 9, 2]
    with inst.start() as runner:
        parallelism = getattr(runner, "parallelism", None)
        assert isinstance(parallelism, int) and parallelism >= 1, (
            f"{type(inst).__name__}'s runner needs an int 'parallelism' >= 1; got {parallelism!r}."
        )
        got = list(runner.map(_Square(), units))
        again = list(runner.map(_Square(), units[:2]))
    indices = sorted(i for i, _ in got)
    assert indices == list(range(len(units))), (
        f"{type(inst).__name__}: map() yielded indices {indices} for {len(units)} units."
    )
    for i, value in got:
        assert value == units[i] * units[i], f"unit {i}: got {value!r}."
    assert sorted(again) == [(0, 9), (1, 1)], "a runner must run a second map() (the next pass)."


KIND_CHECKS: dict[str, list[Callable[[Any], None]]] = {
    "decomposer": [
        check_decomposer_output,
        check_decomposer_dtypes,
        check_decomposer_deterministic,
        check_decomposer_requires_covariance,
    ],
    "preprocessor": [check_preprocessor_output, check_prepass_split],
    "merger": [
        check_merger_supports_matrix,
        check_merger_supports_meta,
        check_merger_output,
        check_merger_linear_scaling,
        check_prepass_split,
    ],
    "evaluator": [check_evaluator],
    "executor": [check_executor],
}
