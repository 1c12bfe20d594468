"""The merge plan: what happens to every tensor, decided from headers alone.

:func:`make_plan` checks that the checkpoints fit together (same key sets, same
shapes and dtypes per key, covariances that fit their weight) and routes every
tensor to its recipe, to the fallback merger or to a plain copy, before any
tensor data is read. Every problem found is collected, so ``pactframe
validate`` can show them all at once.

Routing of one tensor:

1. non-float tensors (int buffers, masks) are copied from the base unchanged;
2. the first rule whose ``match`` regex is found in the name chooses the
   recipe (an ``exclude: true`` rule sends the tensor to the fallback);
3. otherwise the default recipe; if its merger's ``supports()`` refuses the
   tensor (asked on shape-only ``meta`` tensors), the fallback merger takes it.

The route is final: every tensor is routed here, once, and the workers follow the
plan. A ``supports()`` that raises on meta tensors (it looked at values) is a plan
problem naming the tensor, the merger and the exception.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from pactframe.config import MergeSpec, RecipeSpec
from pactframe.covariance_io import INPUT_AXIS
from pactframe.device import COMPUTE_DTYPES, OUTPUT_DTYPES
from pactframe.io.units import dtype_size, format_bytes, numel
from pactframe.seeding import derive_seed
from pactframe.sources import Sources
from pactframe.types import LayerBundle

RECIPE, FALLBACK, COPY = "recipe", "fallback", "copy"
_SHOWN = 5


@attrs.frozen
class TensorPlan:
    """The plan of one tensor name."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # the base checkpoint's dtype
    out_dtype: torch.dtype
    handler: str  # "recipe" | "fallback" | "copy"
    route: str  # "default", "rule '<regex>'"
    reason: str  # why the fallback or the copy ("" for the recipe)
    recipe_index: int  # index into MergeSpec.recipes(), -1 when none
    input_axis: int
    covariance_tasks: tuple[str, ...]
    read_bytes: int  # base + T models + covariances, as stored

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def out_bytes(self) -> int:
        return self.numel * dtype_size(self.out_dtype)


@attrs.frozen
class MergePlan:
    tensors: tuple[TensorPlan, ...]
    task_names: tuple[str, ...]
    compute_dtype: torch.dtype
    prefetch: int
    notes: tuple[str, ...] = ()  # said once in the report (e.g. inputs cast to compute_dtype)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            key = t.handler if t.handler != RECIPE else f"recipe ({t.route})"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    @property
    def output_bytes(self) -> int:
        return sum(t.out_bytes for t in self.tensors)

    @property
    def read_bytes(self) -> int:
        return sum(t.read_bytes for t in self.tensors)

    def memory_estimate(self) -> dict[str, int]:
        """Bytes of tensors alive at once: the largest name's inputs as stored, its
        (T + 3) compute copies (base, T task vectors, delta, output) and covariances,
        plus ``prefetch`` names read ahead. The interpreter (about 0.3 GB with torch)
        comes on top."""
        T = len(self.task_names)
        cs = dtype_size(self.compute_dtype)
        working, largest_read = 0, 0
        for t in self.tensors:
            cov_numel = 0
            if t.covariance_tasks:
                d_in = t.shape[t.input_axis]
                cov_numel = d_in * d_in * len(t.covariance_tasks)
            compute = (T + 3) * t.numel * cs + cov_numel * cs
            working = max(working, t.read_bytes + compute + t.out_bytes)
            largest_read = max(largest_read, t.read_bytes)
        return {
            "working_set_bytes": working + self.prefetch * largest_read,
            "largest_tensor_read_bytes": largest_read,
        }

    def describe(self) -> str:
        """Human-readable plan: counts, memory, and every tensor's handler."""
        mem = self.memory_estimate()
        lines = [
            f"{len(self.tensors)} tensors, {len(self.task_names)} tasks "
            f"({', '.join(self.task_names)}); reads {format_bytes(self.read_bytes)}, writes "
            f"{format_bytes(self.output_bytes)}",
            "handled by: " + ", ".join(f"{k}: {v}" for k, v in self.counts().items()),
            f"estimated peak tensor memory: {format_bytes(mem['working_set_bytes'])} "
            "(+ about 0.3 GB for the interpreter and torch)",
            "",
        ]
        for t in self.tensors:
            what = t.route if t.handler == RECIPE else f"{t.handler}: {t.reason}"
            cov = f" cov[{','.join(t.covariance_tasks)}]" if t.covariance_tasks else ""
            lines.append(
                f"  {t.name}  {str(t.dtype).replace('torch.', '')}{list(t.shape)} -> {what}{cov}"
            )
        return "\n".join(lines)


def check_sources(
    spec_tasks: Sequence[str],
    sources: Sources,
    *,
    input_dtype: str = "same",
    notes: list[str] | None = None,
) -> list[str]:
    """Key sets, shapes, dtypes and covariance shapes; every problem, naming file and tensor.

    Float inputs in different dtypes are one problem listing the dtypes per model,
    or, with ``input_dtype="cast"``, one note appended to ``notes``."""
    problems: list[str] = []
    dtype_mismatch: dict[str, Counter[tuple[str, str]]] = {}
    dtype_examples: dict[str, list[str]] = {}
    base = sources.base
    base_keys = base.keys()
    base_set = set(base_keys)
    for task, model in zip(spec_tasks, sources.models):
        keys = set(model.keys())
        missing = sorted(base_set - keys)
        extra = sorted(keys - base_set)
        if missing:
            problems.append(
                f"model {task!r} ({model.label}) lacks {len(missing)} tensor(s) of the base "
                f"({base.label}): {_preview(missing)}. All checkpoints must share one "
                "architecture and key naming."
            )
        if extra:
            problems.append(
                f"model {task!r} ({model.label}) has {len(extra)} tensor(s) the base "
                f"({base.label}) lacks: {_preview(extra)}. All checkpoints must share one "
                "architecture and key naming."
            )
        for key in base_keys:
            if key not in keys:
                continue
            b, m = base.info(key), model.info(key)
            if b.shape != m.shape:
                hint = ""
                rows_added = len(b.shape) in (1, 2) and m.shape[0] > b.shape[0]
                if rows_added and b.shape[1:] == m.shape[1:]:
                    hint = (
                        " If the fine-tune added tokens, set vocab: base (keep the base's rows) "
                        "or vocab: union (keep the added rows; see docs/config.md)."
                    )
                problems.append(
                    f"tensor {key!r}: shape {list(m.shape)} in model {task!r} ({model.label}) "
                    f"but {list(b.shape)} in the base ({base.label}).{hint}"
                )
            elif b.dtype != m.dtype:
                if b.is_float and m.is_float:
                    dtype_mismatch.setdefault(task, Counter())[(m.dtype_code, b.dtype_code)] += 1
                    dtype_examples.setdefault(task, []).append(key)
                else:
                    problems.append(
                        f"tensor {key!r}: dtype {m.dtype_code} in model {task!r} ({model.label}) "
                        f"but {b.dtype_code} in the base ({base.label}). Save both in one dtype."
                    )

    if dtype_mismatch:
        per_model = "; ".join(
            f"model {task!r}: "
            + ", ".join(
                f"{n} tensor(s) {got} where the base has {want}" for (got, want), n in c.items()
            )
            + f" (e.g. {_preview(dtype_examples[task][:_SHOWN])})"
            for task, c in dtype_mismatch.items()
        )
        if input_dtype == "cast":
            if notes is not None:
                notes.append(
                    f"inputs in different float dtypes were cast to the compute dtype ({per_model})"
                )
        else:
            problems.append(
                f"the inputs differ in float dtype ({per_model}; the base is {base.label}). Set "
                "input_dtype: cast to cast every input to compute_dtype, or save them in one dtype."
            )
    for task, cov in zip(spec_tasks, sources.covariances):
        if cov is None:
            continue
        for key, entry in cov.entries().items():
            if key not in base_set:
                problems.append(
                    f"covariance file {cov.label} (model {task!r}) has entry {key!r}, which is "
                    f"not a tensor of the base ({base.label}). Keys must be state-dict keys."
                )
                continue
            shape = base.info(key).shape
            if len(shape) != 2:
                problems.append(
                    f"covariance file {cov.label} (model {task!r}): entry {key!r} belongs to a "
                    f"{len(shape)}-D tensor of shape {list(shape)}; covariances fit 2-D weights."
                )
                continue
            d_in = shape[INPUT_AXIS[entry.layout]]
            if entry.shape != (d_in, d_in):
                problems.append(
                    f"covariance file {cov.label} (model {task!r}): entry {key!r} has shape "
                    f"{list(entry.shape)}, but the weight {list(shape)} in layout "
                    f"{entry.layout!r} needs ({d_in}, {d_in})."
                )
    return problems


def _preview(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _meta_bundle(spec: MergeSpec, t: TensorPlan, compute: torch.dtype) -> LayerBundle:
    # torch.empty, never torch.empty_like: the first empty_like on a meta tensor
    # imports torch's Python meta registrations (about 0.7 s of a CLI run)
    def meta(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=compute, device="meta")

    covs = None
    if t.covariance_tasks:
        d = t.shape[t.input_axis]
        covs = [meta((d, d)) if name in t.covariance_tasks else None for name in spec.task_names]
    return LayerBundle(
        t.name,
        meta(t.shape),
        [meta(t.shape) for _ in spec.models],
        spec.task_names,
        covs,
        seed=derive_seed(spec.seed, t.name),
        input_axis=t.input_axis,
        task_weights=spec.task_weights,
    )


def ask_supports(recipe: RecipeSpec, bundle: LayerBundle) -> str | None:
    """The merger's refusal reason (``None`` = it takes the bundle)."""
    reason = recipe.merger.supports(bundle)
    return None if reason is None else str(reason)


def supports_problem(
    recipe: RecipeSpec, route: str, exc: BaseException, keys: Sequence[str]
) -> str:
    """The plan problem for a ``supports()`` that raised on shape-only meta tensors."""
    merger = recipe.merger
    cls = type(merger)
    return (
        f"merger {merger.name!r} ({cls.__module__}.{cls.__qualname__}, {route}): supports() "
        f"raised {type(exc).__name__}: {exc} for {len(keys)} tensor(s): {_preview(keys)}. "
        "The plan asks supports() on shape-only meta tensors (no values) to route every "
        "tensor before any is read; supports() must decide from shape and dtype alone "
        "(bundle.base.shape, .ndim, .dtype, the covariances' presence). Fix the merger's "
        "supports(), or add a rule that sends these tensors to another merger."
    )


def make_plan(spec: MergeSpec, sources: Sources) -> tuple[MergePlan | None, list[str]]:
    """Check the sources and route every tensor; ``(plan, [])`` or ``(None, problems)``."""
    notes: list[str] = []
    problems = check_sources(
        spec.task_names, sources, input_dtype=spec.input_dtype, notes=notes
    )
    if problems:
        return None, problems
    compute = COMPUTE_DTYPES[spec.compute_dtype]
    recipes = spec.recipes()
    cov_entries = [None if c is None else c.entries() for c in sources.covariances]
    tensors = []
    raised: dict[tuple[int, str, str], tuple[BaseException, list[str]]] = {}
    for key in sources.base.keys():
        info = sources.base.info(key)
        layouts = sorted({e[key].layout for e in cov_entries if e is not None and key in e})
        if len(layouts) > 1:
            problems.append(
                f"tensor {key!r}: the covariance files disagree on its layout ({layouts}); "
                "collect every covariance from the same architecture."
            )
        input_axis = INPUT_AXIS[layouts[0]] if layouts else 1
        cov_tasks = tuple(
            task for task, e in zip(spec.task_names, cov_entries) if e is not None and key in e
        )
        read = info.nbytes * (1 + len(spec.models)) + sum(
            e[key].shape[0] * e[key].shape[1] * 4 for e in cov_entries if e is not None and key in e
        )
        out_dtype = info.dtype
        if info.is_float and spec.output.dtype != "base":
            out_dtype = OUTPUT_DTYPES[spec.output.dtype]
        common: dict[str, Any] = dict(
            name=key,
            shape=info.shape,
            dtype=info.dtype,
            out_dtype=out_dtype,
            input_axis=input_axis,
            covariance_tasks=cov_tasks,
            read_bytes=read,
        )
        if not info.is_float:
            tensors.append(
                TensorPlan(
                    handler=COPY,
                    route="-",
                    reason=f"non-float ({info.dtype_code})",
                    recipe_index=-1,
                    **common,
                )
            )
            continue
        route, recipe = spec.route(key)
        if recipe is None:
            tensors.append(
                TensorPlan(
                    handler=FALLBACK,
                    route=route,
                    reason=f"excluded by {route}",
                    recipe_index=-1,
                    **common,
                )
            )
            continue
        index = next(i for i, r in enumerate(recipes) if r is recipe)
        probe = TensorPlan(handler=RECIPE, route=route, reason="", recipe_index=index, **common)  # type: ignore[arg-type]
        try:
            reason = ask_supports(recipe, _meta_bundle(spec, probe, compute))
        except Exception as exc:  # noqa: BLE001 - any exception of a plugin is a plan problem
            group = (index, type(exc).__name__, str(exc))
            raised.setdefault(group, (exc, []))[1].append(key)
            continue
        if reason is not None:
            tensors.append(
                attrs.evolve(
                    probe,
                    handler=FALLBACK,
                    reason=f"{recipe.merger.name} does not take it: {reason}",
                    recipe_index=-1,
                )
            )
        else:
            tensors.append(probe)
    for (index, _, _), (error, keys) in raised.items():
        recipe = recipes[index]
        route = "the default recipe" if recipe.label == "default" else recipe.label
        problems.append(supports_problem(recipe, route, error, keys))
    if spec.fallback is None:  # `fallback: null`: a tensor that needs it is an error
        orphans = [t for t in tensors if t.handler == FALLBACK]
        if orphans:
            problems.append(
                f"fallback is null, but {len(orphans)} tensor(s) need the fallback merger: "
                f"{_preview([t.name for t in orphans])} (first: {orphans[0].reason}). Set "
                "fallback: average, or add a rule whose merger takes them."
            )
    if problems:
        return None, problems
    plan = MergePlan(tuple(tensors), spec.task_names, compute, spec.prefetch, tuple(notes))
    return plan, []


def needs_prepass(component: Any) -> bool:
    return bool(getattr(component, "needs_prepass", False))
