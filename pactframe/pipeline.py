"""MergePipeline: streams checkpoints tensor by tensor through the recipe.

For every tensor name (in the base checkpoint's order) the pipeline

1. reads base + T fine-tuned tensors (+ covariances) on a reader thread that
   runs ``prefetch`` names ahead;
2. places them on the device in the compute dtype and forms the task vectors
   ``Delta_t = theta_t - theta_0`` there (the pipeline alone moves tensors);
3. runs the preprocessors in order, then the merger (or the fallback merger,
   or a plain copy for non-float tensors - see :mod:`pactframe.plan`);
4. runs the tensor-level evaluators;
5. forms ``base + delta``, casts it to the output dtype, moves it to the CPU and
   hands it to the sink (the atomic :class:`~pactframe.checkpoint.CheckpointWriter`
   or an in-memory dict).

Two-pass components (``needs_prepass``) get one extra streaming pass per
component before the main pass: every bundle of its recipe, through the
preprocessors before it, goes into ``component.prepare``; the returned state
is passed to each per-tensor call. Tensor seeds are
``derive_seed(run_seed, name)``, so the result does not depend on the order.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import torch

from pactframe.checkpoint import CheckpointWriter, non_weight_files
from pactframe.config import ConfigProblems, MergeSpec, RecipeSpec
from pactframe.device import COMPUTE_DTYPES, peak_device_bytes, peak_rss_bytes, resolve_device
from pactframe.errors import ConfigError, InputError
from pactframe.modulators import ModulatorWriter
from pactframe.output_safety import check_output, merge_inputs
from pactframe.plan import COPY, FALLBACK, RECIPE, MergePlan, TensorPlan, make_plan, needs_prepass
from pactframe.progress import Progress
from pactframe.registry import Registry
from pactframe.seeding import derive_seed
from pactframe.sources import Sources
from pactframe.types import LayerBundle, MergedTensor

REPORT_FILE = "merge_report.json"


@attrs.frozen(eq=False)
class _Inputs:
    """CPU tensors of one name, as read."""

    base: torch.Tensor
    finetuned: list[torch.Tensor]  # consumed (emptied) by _bundle to free memory early
    covariances: tuple[torch.Tensor | None, ...] | None
    owned: bool = False  # True when the tensors are fresh buffers nobody else holds


@attrs.frozen(eq=False)
class TensorResult:
    """One merged tensor (CPU, output dtype) and what the report says about it."""

    plan: TensorPlan
    tensor: torch.Tensor
    merged: MergedTensor | None  # on the device; None for copies
    report: dict[str, Any]
    original: LayerBundle | None = None  # as read (device, compute dtype); None for copies
    processed: LayerBundle | None = None  # after the preprocessors


class MergePipeline:
    """Runs a :class:`~pactframe.config.MergeSpec` over its sources.

    Build it from a spec (``MergePipeline(spec)``), a YAML path or a dict
    (:meth:`from_config`); ``sources`` default to the files the spec names.
    """

    def __init__(
        self,
        spec: MergeSpec,
        *,
        sources: Sources | None = None,
        device: str | None = None,
    ) -> None:
        self.spec = spec
        self.device = resolve_device(device or spec.device)
        self.compute_dtype = COMPUTE_DTYPES[spec.compute_dtype]
        self._sources = None if sources is None else sources.with_nonfinite(spec.nonfinite)
        self._plan: MergePlan | None = None
        self._vocab_checked = False
        self.vocab: Any = None  # a pactframe.vocab.VocabResult once the sources are opened
        if spec.fallback is not None and needs_prepass(spec.fallback):
            raise ConfigError(
                f"fallback: {spec.fallback.name!r} is a two-pass merger; the fallback must "
                "work tensor by tensor (use average or task_arithmetic)."
            )
        self.timings: dict[str, float] = {}

    @classmethod
    def from_config(
        cls,
        config: MergeSpec | Mapping[str, Any] | str | os.PathLike[str],
        *,
        registry: Registry | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        device: str | None = None,
    ) -> MergePipeline:
        from pactframe.api import load_spec

        return cls(load_spec(config, registry=registry, base_dir=base_dir), device=device)

    # planning -----------------------------------------------------------
    @property
    def sources(self) -> Sources:
        if self._sources is None:
            sources, problems = Sources.open(
                self.spec.base,
                self.spec.models,
                nonfinite=self.spec.nonfinite,
                copy_files=self.spec.output.copy_files,
            )
            if problems:
                raise ConfigProblems(problems, "the checkpoints")
            self._sources = sources
        if not self._vocab_checked:  # added-token rows (vocab: base | union), see pactframe.vocab
            from pactframe.vocab import apply_vocab

            self._sources, self.vocab = apply_vocab(self.spec, self._sources)
            self._vocab_checked = True
        return self._sources  # type: ignore[return-value]

    def plan(self) -> MergePlan:
        """Check every header and route every tensor (no tensor data is read)."""
        if self._plan is None:
            plan, problems = make_plan(self.spec, self.sources)
            if problems or plan is None:
                raise ConfigProblems(problems, "the checkpoints")
            self._plan = plan
        return self._plan

    # reading and placing -------------------------------------------------
    def _read(self, t: TensorPlan) -> _Inputs:
        src = self.sources
        base = src.base.load(t.name)
        fts = [m.load(t.name) for m in src.models] if t.handler != COPY else []
        covs = None
        if t.covariance_tasks and t.handler != COPY:
            covs = tuple(
                None if c is None or t.name not in c.entries() else c.load(t.name)
                for c in src.covariances
            )
        return _Inputs(base, fts, covs, owned=all(getattr(m, "fresh", False) for m in src.models))

    def _bundle(self, t: TensorPlan, inputs: _Inputs) -> LayerBundle:
        dev, dt = self.device, self.compute_dtype
        base = inputs.base.to(dev, dt)
        tvs = []
        owned = inputs.owned
        while inputs.finetuned:  # drop each fine-tuned tensor once its task vector exists
            ft = inputs.finetuned.pop(0)
            work = ft.to(dev, dt)
            if owned or work.data_ptr() != ft.data_ptr():
                tvs.append(work.sub_(base))  # our own buffer: subtract in place
            else:
                tvs.append(work - base)  # a caller's tensor (in-memory API): never mutate it
        covs = None
        if inputs.covariances is not None:
            covs = [None if c is None else c.to(dev, dt) for c in inputs.covariances]
        return LayerBundle(
            t.name,
            base,
            tvs,
            self.spec.task_names,
            covs,
            seed=derive_seed(self.spec.seed, t.name),
            input_axis=t.input_axis,
            task_weights=self.spec.task_weights,
        )

    def _stream(self, tensors: list[TensorPlan]) -> Iterator[tuple[TensorPlan, _Inputs]]:
        """Read tensors in order with ``prefetch`` names read ahead on one thread."""
        ahead = self.spec.prefetch
        if ahead == 0:
            for t in tensors:
                yield t, self._read(t)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pactframe-reader") as pool:
            queue: deque[tuple[TensorPlan, Future[_Inputs]]] = deque()
            it = iter(tensors)
            try:
                for t in it:
                    queue.append((t, pool.submit(self._read, t)))
                    if len(queue) > ahead:
                        t0, fut = queue.popleft()
                        yield t0, fut.result()
                while queue:
                    t0, fut = queue.popleft()
                    yield t0, fut.result()
            finally:
                for _, fut in queue:
                    fut.cancel()

    # two-pass components -------------------------------------------------
    def _prepass(self, plan: MergePlan) -> dict[tuple[int, int], Any]:
        """States of two-pass components, keyed by (recipe index, position);
        position ``len(preprocessors)`` is the merger."""
        states: dict[tuple[int, int], Any] = {}
        for r_index, recipe in enumerate(self.spec.recipes()):
            components: list[Any] = [*recipe.preprocessors, recipe.merger]
            for pos, comp in enumerate(components):
                if not needs_prepass(comp):
                    continue
                mine = [
                    t for t in plan.tensors if t.handler == RECIPE and t.recipe_index == r_index
                ]
                states[(r_index, pos)] = comp.prepare(
                    self._prepass_bundles(recipe, r_index, pos, mine, states)
                )
        return states

    def _prepass_bundles(
        self, recipe: RecipeSpec, r_index: int, upto: int, tensors: list[TensorPlan], states: dict
    ) -> Iterator[LayerBundle]:
        for t, inputs in self._stream(tensors):
            bundle = self._bundle(t, inputs)
            if not t.decided and recipe.merger.supports(bundle) is not None:
                continue
            for pos in range(upto):
                bundle = recipe.preprocessors[pos].preprocess(bundle, states.get((r_index, pos)))
            yield bundle

    # the main pass -------------------------------------------------------
    def results(self, progress: Progress | None = None) -> Iterator[TensorResult]:
        """Merge every tensor in plan order, yielding CPU results one at a time."""
        plan = self.plan()
        t0 = time.perf_counter()
        states = self._prepass(plan)
        self.timings["prepass_s"] = time.perf_counter() - t0
        recipes = self.spec.recipes()
        compute_s = 0.0
        for t, inputs in self._stream(list(plan.tensors)):
            start = time.perf_counter()
            result = self._merge_one(t, inputs, recipes, states)
            compute_s += time.perf_counter() - start
            if progress is not None:
                progress.update(t.name, t.read_bytes)
            yield result
        self.timings["compute_s"] = compute_s

    def _merge_one(
        self, t: TensorPlan, inputs: _Inputs, recipes: list[RecipeSpec], states: dict
    ) -> TensorResult:
        start = time.perf_counter()
        entry: dict[str, Any] = {
            "name": t.name,
            "shape": list(t.shape),
            "dtype": str(t.dtype).replace("torch.", ""),
            "handler": t.handler,
            "route": t.route,
        }
        if t.handler == COPY:
            entry["reason"] = t.reason
            return TensorResult(t, inputs.base.to(t.out_dtype), None, entry)
        bundle = self._bundle(t, inputs)
        processed = bundle
        handler, reason = t.handler, t.reason
        recipe = recipes[t.recipe_index] if t.handler == RECIPE else None
        if recipe is not None and not t.decided:
            refusal = recipe.merger.supports(bundle)
            if refusal is not None:
                handler, reason = FALLBACK, f"{recipe.merger.name} does not take it: {refusal}"
                recipe = None
        if recipe is None:
            merger, state = self.spec.fallback, None
            if merger is None:
                raise ConfigError(
                    f"Tensor {t.name!r} needs the fallback merger ({reason}), "
                    "but fallback is null. Set fallback: average."
                )
        else:
            for pos, pre in enumerate(recipe.preprocessors):
                processed = pre.preprocess(processed, states.get((t.recipe_index, pos)))
            merger = recipe.merger
            state = states.get((t.recipe_index, len(recipe.preprocessors)))
        merged = merger.merge(processed, state)
        if not isinstance(merged, MergedTensor) or tuple(merged.delta.shape) != t.shape:
            got = tuple(merged.delta.shape) if isinstance(merged, MergedTensor) else type(merged)
            raise InputError(
                f"Tensor {t.name!r}: merger {merger.name!r} returned {got}; expected a "
                f"MergedTensor with a delta of shape {t.shape}."
            )
        # base + delta in the compute dtype, rounded once into the output dtype: one
        # kernel writes the output buffer (no compute-dtype temporary to cast afterwards)
        out = torch.empty(t.shape, dtype=t.out_dtype, device=bundle.base.device)
        torch.add(bundle.base, merged.delta.to(bundle.base.dtype), out=out)
        out = out.to("cpu")
        entry["handler"] = handler
        entry["merger"] = merger.name
        if reason:
            entry["reason"] = reason
        records = [*processed.records, *merged.records]
        if records:
            entry["records"] = [{"source": r.source, "data": _jsonable(r.data)} for r in records]
        evals = {}
        for ev in self.spec.evaluators:
            evals[ev.name] = _jsonable(ev.evaluate_tensor(bundle, processed, merged))
        if evals:
            entry["evaluators"] = evals
        if merged.is_task_conditioned:
            entry["task_conditioned"] = True
        entry["seconds"] = round(time.perf_counter() - start, 6)
        return TensorResult(t, out, merged, entry, bundle, processed)

    # sinks ----------------------------------------------------------------
    def run(
        self,
        out: str | os.PathLike[str],
        *,
        force: bool = False,
        progress: bool | Progress = False,
        on_tensor: Callable[[TensorResult], None] | None = None,
    ) -> dict[str, Any]:
        """Merge into the folder ``out`` atomically; return the merge report."""
        from pactframe.report import CONFIG_FILE, build_report, config_yaml, model_card

        started = time.perf_counter()
        inputs, protected = merge_inputs(self.spec)
        check_output(out, inputs, protected=protected)  # never over an input, force or not
        plan = self.plan()  # every check happens before the output folder is touched
        self.timings["plan_s"] = time.perf_counter() - started
        layout = [(t.name, t.shape, t.out_dtype) for t in plan.tensors]
        bar = (
            progress
            if isinstance(progress, Progress)
            else Progress(len(plan.tensors), plan.read_bytes, enabled=bool(progress))
        )
        entries: list[dict[str, Any]] = []
        with CheckpointWriter(
            out,
            layout,
            shard_size=self.spec.output.shard_size,
            force=force,
            metadata={"pactframe_merger": self.spec.recipe.merger.name},
        ) as w:
            modulators = ModulatorWriter(w.staging, self.spec.task_names)
            try:
                for result in self.results(bar):
                    w.write(result.plan.name, result.tensor)
                    m = result.merged
                    if m is not None and m.is_task_conditioned:
                        assert m.task_names and m.task_masks and m.task_scales
                        modulators.add(
                            result.plan.name,
                            result.plan.shape,
                            m.task_names,
                            m.task_masks,
                            m.task_scales,
                        )
                    entries.append(result.report)
                    if on_tensor is not None:
                        on_tensor(result)
                modulator_path = modulators.finish()
            finally:
                modulators.close()
            bar.close()
            if self.spec.output.copy_files and self.spec.base.is_dir():
                for path in non_weight_files(self.spec.base):
                    w.copy_file(path)
            if self.vocab is not None:  # vocab: union writes matching tokenizer files
                self.vocab.write_files(w)
            self.timings["total_s"] = time.perf_counter() - started
            report = build_report(
                self,
                plan,
                entries,
                peak_rss=peak_rss_bytes(),
                peak_device=peak_device_bytes(self.device),
                modulators=modulator_path.name if modulator_path else None,
                shards=w.shard_names,
            )
            w.add_file(REPORT_FILE, json.dumps(report, indent=2) + "\n")
            w.add_file("README.md", model_card(report))
            w.add_file(CONFIG_FILE, config_yaml(report))
            w.commit()
        return report

    def merge_to_dict(self) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Merge in memory: ``({name: CPU tensor}, per-tensor report entries)``."""
        state, entries = {}, []
        for result in self.results():
            state[result.plan.name] = result.tensor
            entries.append(result.report)
        return state, entries


def _jsonable(value: Any) -> Any:
    """Tensors and numpy scalars -> lists/floats, so records serialise to JSON."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "item") and hasattr(value, "dtype"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
