"""The method comparison: hyperparameters on validation, accuracy on test, merge time.

For each method and each variant (TIES k, PACT K/k, PAVE rho), one merge with
``scaling = 1`` gives ``delta``; every scale ``a`` of the method's grid is
scored on the VALIDATION split as ``base + a * delta`` (exact: the merger
declares the parameter its delta is linear in, ``Merger.linear_scaling``, and
``pactframe.testing.check_component`` checks it; a method with a grid whose
merger declares none is skipped, with the reason in the results); when a
variant's best scale is the top of the grid, the sweep goes on past it (x 1.5
each step) until the score drops. The best (variant, scale) by mean validation
normalized accuracy is merged again with that scaling, timed (wall clock, one
process), and evaluated once on the TEST split. Results are written per method
as soon as they exist, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from pactframe.errors import PactframeError
from pactframe.registry import Registry, build_registry
from pactframe_bench.cache import read_json, recipe_key, write_json
from pactframe_bench.merge import merge_in_memory
from pactframe_bench.methods import Method
from pactframe_bench.suite import BuiltSuite


def available(method: Method, registry: Registry) -> str | None:
    """``None`` if every component of ``method`` is registered (and real) and its scaling
    grid can be swept, else why not."""
    for kind, name in sorted(method.components()):
        if (kind, name) not in registry:
            return f"{kind} {name!r} is not registered"
    if len(method.scalings) > 1 and scaling_parameter(registry, method.merger["name"]) is None:
        return (
            f"merger {method.merger['name']!r} declares no parameter its delta is linear in "
            "(Merger.linear_scaling), so the method's scaling grid cannot be swept; give the "
            "method scalings=(1.0,) or set linear_scaling on the merger"
        )
    return None


def scaling_parameter(registry: Registry, merger: str) -> str | None:
    """The name of ``merger``'s linear scaling parameter (``Merger.linear_scaling``:
    ``base + a * delta`` is exactly the merge with that parameter at ``a``), or ``None``."""
    value = getattr(registry.get("merger", merger), "linear_scaling", None)
    return None if value is None else str(value)


def load_covariances(suite: BuiltSuite) -> dict[str, dict[str, torch.Tensor]]:
    """task -> {weight key: (d_in, d_in) covariance} from the suite's covariance files."""
    from pactframe.covariance_io import load_covariance, read_covariance_header

    out = {}
    for task in suite.task_names:
        path = suite.covariance_file(task)
        if path is not None and Path(path).exists():
            out[task] = {k: load_covariance(path, k) for k in read_covariance_header(path)}
    return out


def _score(result: Mapping[str, Any]) -> float:
    norm = result.get("mean_normalized_accuracy")
    return float(norm if norm is not None else result["mean_accuracy"])


@attrs.frozen
class Tuned:
    """A method's hyperparameters as chosen on validation, and the sweep behind them."""

    method: str
    config: dict[str, Any]
    chosen: dict[str, Any]
    validation_score: float
    sweep: list[dict[str, Any]]


def tune_method(
    suite: BuiltSuite,
    method: Method,
    models: Mapping[str, Mapping[str, torch.Tensor]],
    covariances: Mapping[str, Mapping[str, torch.Tensor]] | None,
    registry: Registry,
) -> Tuned:
    """Choose ``method``'s variant and scaling by mean validation normalized accuracy."""
    base = suite.base_state()
    param = scaling_parameter(registry, method.merger["name"])
    if param is None and len(method.scalings) > 1:
        raise ValueError(f"method {method.name!r}: {available(method, registry)}")
    scalings = method.scalings if param is not None else (1.0,)
    best: tuple[float, int, float] | None = None
    sweep = []
    for index, variant in enumerate(method.variants):
        result = merge_in_memory(
            base,
            models,
            method_config(method, variant, 1.0, registry),
            covariances if method.needs_covariances else None,
            registry,
        )
        grid = list(scalings)
        variant_best: tuple[float, float] | None = None
        position = 0
        while position < len(grid):
            a = grid[position]
            position += 1
            score = _score(suite.evaluate(result.states(base, a), "validation"))
            sweep.append({"variant": variant, "scaling": a, "validation_score": score})
            if variant_best is None or score > variant_best[0]:
                variant_best = (score, a)
            if best is None or score > best[0]:
                best = (score, index, a)
            if position == len(grid) and _extend(grid, variant_best[1], len(scalings)):
                grid.append(round(grid[-1] * EXTEND_FACTOR, 4))
    assert best is not None
    score, index, scale = best
    variant = method.variants[index]
    chosen = {**variant, **({param: scale} if param is not None and len(scalings) > 1 else {})}
    config = method_config(method, variant, scale, registry)
    return Tuned(method.name, config, chosen, score, sweep)


EXTEND_FACTOR = 1.5
MAX_EXTENSIONS = 6


def _extend(grid: Sequence[float], best_scale: float, original: int) -> bool:
    """Go past the grid's top while the best scale so far is the last one tried (the
    optimum lies beyond it), at most MAX_EXTENSIONS times; one-point grids stay."""
    return original > 1 and best_scale == grid[-1] and len(grid) < original + MAX_EXTENSIONS


def _tuned_at_grid_top(row: Mapping[str, Any], method: Method) -> bool:
    """True if a stored row chose some variant's best scale at the top of the grid
    without trying beyond it (rows from before the grid was extended automatically)."""
    if len(method.scalings) < 2:
        return False
    top = max(method.scalings)
    per_variant: dict[str, list[tuple[float, float]]] = {}
    for entry in row.get("sweep", []):
        key = repr(sorted(entry["variant"].items()))
        per_variant.setdefault(key, []).append((entry["validation_score"], entry["scaling"]))
    for entries in per_variant.values():
        top_score = max(score for score, _ in entries)
        best_scale = next(a for score, a in entries if score == top_score)  # first, as tuned
        if best_scale >= top and max(a for _, a in entries) <= top:
            return True
    return False


def method_config(
    method: Method, variant: dict[str, Any], scale: float, registry: Registry
) -> dict[str, Any]:
    """The pipeline recipe (merger, preprocessors, seed) of ``method`` with ``variant``."""
    merger, pres = method.configure(variant)
    param = scaling_parameter(registry, merger["name"])
    if param is not None:
        merger[param] = scale
    return {"merger": merger, "preprocessors": pres, "seed": 0}


def run_method(
    suite: BuiltSuite,
    method: Method,
    models: Mapping[str, Mapping[str, torch.Tensor]],
    covariances: Mapping[str, Mapping[str, torch.Tensor]] | None,
    registry: Registry,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Tune ``method`` on validation, then time its final merge and test it."""
    tuned = tune_method(suite, method, models, covariances, registry)
    start = time.perf_counter()
    result = merge_in_memory(
        suite.base_state(),
        models,
        tuned.config,
        covariances if method.needs_covariances else None,
        registry,
    )
    seconds = time.perf_counter() - start
    test = suite.evaluate(result.states(suite.base_state(), 1.0), "test")
    log(
        f"  {method.name}: chosen on validation {tuned.chosen or '(defaults)'}; "
        f"test acc {100 * test['mean_accuracy']:.1f}, merge {seconds:.2f} s"
    )
    return {
        "method": method.name,
        "chosen": tuned.chosen,
        "validation_score": tuned.validation_score,
        "test": test,
        "merge_seconds": seconds,
        "sweep": tuned.sweep,
        "config": tuned.config,
    }


def method_key(method: Method, registry: Registry) -> str:
    """The cache key of ``method``'s row: the method and every variant's RESOLVED
    configuration (each component built, so its defaults are spelled out). A change
    of a component's defaults (randomized_svd's iteration count, say) then reruns
    the rows it affects instead of reusing them."""
    resolved = []
    for variant in method.variants:
        merger, pres = method.configure(variant)
        try:
            resolved.append(
                [registry.build("merger", merger).to_config()]
                + [registry.build("preprocessor", p).to_config() for p in pres]
            )
        except PactframeError:  # an unavailable component: the row is skipped (below)
            resolved.append([merger, *pres])
    return recipe_key({"method": repr(method), "resolved": resolved})


def _row_from_other_runs(results_file: Path, name: str, key: str) -> dict[str, Any] | None:
    """The row of method ``name`` with recipe ``key`` from another results file of the same
    seed folder (a comparison over a different method list), if one exists. Read afresh
    for each method, so rows that a concurrent run of the same seed finished meanwhile
    are picked up."""
    for other in sorted(results_file.parent.glob("results-*.json")):
        if other == results_file:
            continue
        row = read_json(other).get("rows", {}).get(name)
        if row is not None and row.get("key") == key:
            return dict(row)
    return None


def compare(
    suite: BuiltSuite,
    methods: Sequence[Method],
    results_file: Path,
    registry: Registry | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every available method (resuming from ``results_file``); returns all rows."""
    registry = registry or build_registry()
    results: dict[str, Any] = read_json(results_file) if results_file.exists() else {}
    rows = results.setdefault("rows", {})
    if "zero_shot" not in results:
        results["zero_shot"] = suite.evaluate(suite.base_state(), "test")
        results["individual"] = suite.individual_accuracy("test")
        write_json(results_file, results)
    models = None
    covariances = None
    for method in methods:
        key = method_key(method, registry)
        if (
            method.name in rows
            and rows[method.name].get("key") == key
            and not _tuned_at_grid_top(rows[method.name], method)
        ):
            continue
        earlier = _row_from_other_runs(results_file, method.name, key)
        if earlier is not None and not _tuned_at_grid_top(earlier, method):
            log(f"  {method.name}: reused from an earlier comparison of this seed")
            rows[method.name] = earlier
            write_json(results_file, results)
            continue
        reason = available(method, registry)
        if reason is not None:
            log(f"  {method.name}: skipped ({reason})")
            results.setdefault("skipped", {})[method.name] = reason
            continue
        if models is None:
            models = {t: suite.finetuned_state(t) for t in suite.task_names}
        if method.needs_covariances and covariances is None:
            covariances = load_covariances(suite)
        row = run_method(suite, method, models, covariances, registry, log)
        row["key"] = key
        rows[method.name] = row
        results.get("skipped", {}).pop(method.name, None)
        write_json(results_file, results)
    return results
