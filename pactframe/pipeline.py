"""MergePipeline: plans a merge, cuts it into work units, writes what comes back.

The pipeline holds no algorithm. It

1. checks the config, the executor's settings and every checkpoint header, and
   routes every tensor (:mod:`pactframe.plan`) before any tensor data is read;
2. runs the prepass of each two-pass component (``needs_prepass``), through the
   preprocessors before it: as ``prepare_map`` over contiguous runs of tensors
   spread over the workers and one ``prepare_reduce`` here, or as one whole
   ``prepare`` on one worker when the component has no split form;
3. cuts the main pass into one :class:`~pactframe.work.TensorUnit` per tensor
   name and hands them, with a :class:`~pactframe.work.MergeJob` (spec, states,
   device), to the executor (``local`` by default: this process, reading
   ``prefetch`` names ahead on a thread). Each worker reads its own tensors,
   merges them (:class:`~pactframe.work.TensorWorker`: task vectors,
   preprocessors, merger or fallback or copy, evaluators, ``base + delta`` in the
   output dtype on the CPU) and returns the result;
4. writes each result the moment it arrives, in any order, at its planned
   offset in the atomic :class:`~pactframe.io.writer.CheckpointWriter`
   (task modulators and the report in plan order), or collects a dict; with
   ``output.format: lora`` the workers also return each merged delta and
   :func:`pactframe.lora.write_merged_adapter` writes a PEFT adapter instead.

Tensor seeds are ``derive_seed(run_seed, name)`` and a prepass split must be
exact, so the bytes written do not depend on the executor, the number of
workers or the order results arrive in (given the same torch thread count per
worker: see ``docs/executors.md``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch

from pactframe.config import ConfigProblems, MergeSpec, load_spec
from pactframe.contracts import Executor, splits_prepass
from pactframe.device import COMPUTE_DTYPES, peak_device_bytes, peak_rss_bytes, resolve_device
from pactframe.errors import ConfigError
from pactframe.execution import InProcessRunner, contiguous_chunks, ordered
from pactframe.io.reader import non_weight_files
from pactframe.io.writer import CheckpointWriter
from pactframe.modulators import ModulatorWriter
from pactframe.output_safety import check_output, merge_inputs
from pactframe.plan import RECIPE, MergePlan, make_plan, needs_prepass
from pactframe.progress import Progress
from pactframe.registry import Registry
from pactframe.report import CONFIG_FILE, build_report, config_yaml, model_card
from pactframe.seeding import derive_seed
from pactframe.sources import Sources
from pactframe.timings import RunTimings
from pactframe.work import (
    MergeJob,
    PrepassResult,
    PrepassUnit,
    TensorResult,
    TensorUnit,
    jsonable,
    open_files,
)

REPORT_FILE = "merge_report.json"
__all__ = ["MergePipeline", "TensorResult", "REPORT_FILE"]


class MergePipeline:
    """Runs a :class:`~pactframe.config.MergeSpec` over its sources.

    Build it from a spec (``MergePipeline(spec)``), a YAML path or a dict
    (:meth:`from_config`); ``sources`` default to the files the spec names.
    ``executor`` (default: the spec's, else ``local``) runs the work units.
    """

    def __init__(
        self,
        spec: MergeSpec,
        *,
        sources: Sources | None = None,
        device: str | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.spec = spec
        self.executor: Executor | None = executor or getattr(spec, "executor", None)
        self._device_spec = device or spec.device
        try:
            self.device = resolve_device(self._device_spec)
        except ConfigError:
            if self._runs_here:
                raise
            # workers elsewhere (a cluster) may have the device this driver lacks
            self.device = torch.device(str(self._device_spec).split(":")[0].replace("auto", "cpu"))
        self._workers: dict[str, dict[str, Any]] = {}
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
        self._timings = RunTimings()  # the last run's (see the ``timings`` property)

    @property
    def timings(self) -> Mapping[str, float]:
        """The last run's timings in seconds, read-only (each run returns its own in
        its report; :class:`~pactframe.timings.RunTimings`)."""
        return MappingProxyType(self._timings.as_dict())

    @classmethod
    def from_config(
        cls,
        config: MergeSpec | Mapping[str, Any] | str | os.PathLike[str],
        *,
        registry: Registry | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        device: str | None = None,
    ) -> MergePipeline:
        return cls(load_spec(config, registry=registry, base_dir=base_dir), device=device)

    # planning -----------------------------------------------------------
    @property
    def sources(self) -> Sources:
        if self._sources is None:
            self._sources = open_files(self.spec)  # as every worker opens them
        if not self._vocab_checked:  # added-token rows (vocab: base | union), see pactframe.vocab
            from pactframe.vocab import apply_vocab

            self._sources, self.vocab = apply_vocab(self.spec, self._sources)
            self._vocab_checked = True
        return self._sources

    def plan(self) -> MergePlan:
        """Check every header and route every tensor (no tensor data is read)."""
        if self._plan is None:
            plan, problems = make_plan(self.spec, self.sources)
            if problems or plan is None:
                raise ConfigProblems(problems, "the checkpoints")
            self._plan = plan
        return self._plan

    # executors -----------------------------------------------------------
    def executor_problems(self) -> list[str]:
        """The executor's own check (package, cluster, devices), as config problems."""
        ex = self.executor
        if ex is None:
            return []
        return [f"executor {ex.name!r}: {p}" for p in ex.check()]

    def _start(self) -> Any:
        """The executor's runner (its settings were checked by :meth:`run`)."""
        if self.executor is None:
            return InProcessRunner()
        return self.executor.start()

    def _job(
        self,
        states: dict[tuple[int, int], Any],
        in_process: bool,
        stage: tuple[int, int] | None = None,
        keep: bool = False,
        deltas: bool = False,
    ) -> MergeJob:
        if in_process:
            return MergeJob(
                self.spec, states, str(self.device), self.sources, stage, keep, deltas=deltas
            )
        src = self._sources
        if src is not None and not (
            all(_from_files(s) for s in (src.base, *src.models))
            and all(c is None or hasattr(c, "path") for c in src.covariances)
        ):
            raise ConfigError(
                f"The {self.executor_name!r} executor runs units in other processes, which read "
                "the checkpoints from files; this merge was given in-memory tensors. Use the "
                "'local' executor, or save the checkpoints as safetensors files."
            )
        return MergeJob(self.spec, states, self._device_spec, None, stage, keep, deltas=deltas)

    @property
    def executor_name(self) -> str:
        return self.executor.name if self.executor is not None else "local"

    @property
    def _runs_here(self) -> bool:
        """True when the executor runs units in this process (sources used as they are)."""
        return self.executor is None or bool(self.executor.in_process)

    def _note(self, result: TensorResult | PrepassResult, prepass: bool) -> None:
        w = self._workers.setdefault(
            result.worker,
            {
                "device": result.device,
                "tensors": 0,
                "compute_s": 0.0,
                "prepass_s": 0.0,
                "peak_rss_bytes": 0,
                "baseline_rss_bytes": result.worker_baseline_rss,
            },
        )
        if prepass:
            w["prepass_s"] += result.seconds
        else:
            w["tensors"] += 1
            w["compute_s"] += result.seconds
        w["peak_rss_bytes"] = max(w["peak_rss_bytes"], result.worker_peak_rss)

    def executor_report(self, runner: Any) -> dict[str, Any]:
        """The report's ``executor`` section: which, its settings, per-worker timings."""
        config = self.executor.to_config() if self.executor is not None else {"name": "local"}
        return {
            "name": self.executor_name,
            "config": jsonable(config),
            "parallelism": int(getattr(runner, "parallelism", 1)),
            "workers": {
                label: {
                    **w,
                    "compute_s": round(w["compute_s"], 4),
                    "prepass_s": round(w["prepass_s"], 4),
                }
                for label, w in sorted(self._workers.items())
            },
        }

    # two-pass components -------------------------------------------------
    def _prepass(
        self, plan: MergePlan, runner: Any, in_process: bool
    ) -> dict[tuple[int, int], Any]:
        """States of two-pass components, keyed by (recipe index, position);
        position ``len(preprocessors)`` is the merger."""
        states: dict[tuple[int, int], Any] = {}
        parts = max(1, int(getattr(runner, "parallelism", 1)))
        for r_index, recipe in enumerate(self.spec.recipes()):
            components: list[Any] = [*recipe.preprocessors, recipe.merger]
            for pos, comp in enumerate(components):
                if not needs_prepass(comp):
                    continue
                mine = [
                    t for t in plan.tensors if t.handler == RECIPE and t.recipe_index == r_index
                ]
                job = self._job(dict(states), in_process, stage=(r_index, pos))
                if splits_prepass(comp):
                    # a few runs per worker balance the load; the split is exact, so the
                    # number of runs does not change the state
                    runs = contiguous_chunks(mine, 1 if parts == 1 else 2 * parts)
                    units = [PrepassUnit(run, True) for run in runs]
                    partials = self._partials(runner.map(job, units), len(units))
                    states[(r_index, pos)] = comp.prepare_reduce(partials)
                else:
                    unit = PrepassUnit(tuple(mine), False)
                    (state,) = list(self._partials(runner.map(job, [unit]), 1))
                    states[(r_index, pos)] = state
        return states

    def _partials(self, pairs: Any, count: int) -> Iterator[Any]:
        for result in ordered(pairs, count):
            self._note(result, prepass=True)
            yield result.partial

    def _units(self, plan: MergePlan) -> list[TensorUnit]:
        return [TensorUnit(t, derive_seed(self.spec.seed, t.name)) for t in plan.tensors]

    # the main pass -------------------------------------------------------
    def _passes(
        self,
        plan: MergePlan,
        runner: Any,
        timings: RunTimings,
        *,
        in_process: bool,
        keep: bool = False,
        deltas: bool = False,
    ) -> Iterator[tuple[int, TensorResult]]:
        """The prepass, then the main pass on ``runner``: ``(plan index, result)`` in the
        order results arrive; fills ``timings``' ``prepass_s``, ``compute_s`` and
        ``main_pass_s``, and the per-worker notes of :meth:`executor_report`."""
        self._timings = timings
        self._workers = {}
        t0 = time.perf_counter()
        states = self._prepass(plan, runner, in_process)
        timings.prepass_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        job = self._job(states, in_process, keep=keep, deltas=deltas)
        compute_s = 0.0
        for index, result in runner.map(job, self._units(plan)):
            compute_s += result.seconds
            self._note(result, prepass=False)
            yield index, result
        timings.compute_s = compute_s
        timings.main_pass_s = time.perf_counter() - t0

    def results(
        self, progress: Progress | None = None, *, timings: RunTimings | None = None
    ) -> Iterator[TensorResult]:
        """Merge every tensor in plan order in this process, yielding CPU results one at a
        time with their bundles and merged tensor kept (for diagnostics). ``timings``
        (default: a new one) receives the passes' seconds."""
        plan = self.plan()
        with InProcessRunner() as runner:
            passes = self._passes(plan, runner, timings or RunTimings(), in_process=True, keep=True)
            for _, result in passes:
                if progress is not None:
                    progress.update(result.plan.name, result.plan.read_bytes)
                yield result

    def stream(
        self, runner: Any, *, deltas: bool = False, timings: RunTimings | None = None
    ) -> Iterator[tuple[int, TensorResult]]:
        """The prepass and main pass on ``runner`` (from :meth:`_start`): ``(plan index,
        result)`` in the order results arrive; ``deltas`` returns each merged delta too;
        ``timings`` (default: a new one) receives the passes' seconds."""
        return self._passes(
            self.plan(), runner, timings or RunTimings(), in_process=self._runs_here, deltas=deltas
        )

    def report(
        self,
        plan: MergePlan,
        entries: Sequence[dict[str, Any] | None],
        timings: RunTimings,
        *,
        shards: Sequence[str],
        modulators: str | None = None,
        executor: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The merge report of a run of this pipeline (:func:`pactframe.report.build_report`
        given this pipeline's spec, device and vocabulary notes, and the peak memory now)."""
        return build_report(
            self.spec,
            plan,
            [e for e in entries if e is not None],
            device=self.device,
            timings=timings,
            notes=tuple(getattr(self.vocab, "notes", ()) if self.vocab is not None else ()),
            peak_rss=peak_rss_bytes(),
            peak_device=peak_device_bytes(self.device),
            modulators=modulators,
            shards=shards,
            executor=executor,
        )

    # sinks ----------------------------------------------------------------
    def run(
        self,
        out: str | os.PathLike[str],
        *,
        force: bool = False,
        progress: bool | Progress = False,
        on_tensor: Callable[[TensorResult], None] | None = None,
    ) -> dict[str, Any]:
        """Merge into the folder ``out`` atomically; return the merge report.

        The executor's settings are checked first, then every header: nothing is
        read, started or written before both pass. Results are written as they
        arrive, in any order; ``on_tensor`` sees each one.
        """
        timings = RunTimings()
        self._timings = timings
        plan = self._check_before_writing(out)
        timings.plan_s = timings.elapsed()
        bar = self._progress_bar(plan, progress)
        if self.spec.output.format == "lora":  # a PEFT adapter instead of a model
            from pactframe.lora import write_merged_adapter

            return write_merged_adapter(
                self,
                out,
                force=force,
                progress=bar,
                on_tensor=on_tensor,
                timings=timings,
                report_file=REPORT_FILE,
                model_card=model_card,
            )
        layout = [(t.name, t.shape, t.out_dtype) for t in plan.tensors]
        with CheckpointWriter(
            out,
            layout,
            shard_size=self.spec.output.shard_size,
            force=force,
            metadata=shard_metadata(self.spec),
        ) as w, self._start() as runner:
            entries, modulators = self._write_tensors(w, runner, plan, timings, bar, on_tensor)
            self._copy_side_files(w)
            report = self.report(
                plan,
                entries,
                timings.finish(),
                shards=w.shard_names,
                modulators=modulators,
                executor=self.executor_report(runner),
            )
            _add_report_files(w, report)
            w.commit()
        return report

    def _check_before_writing(self, out: str | os.PathLike[str]) -> MergePlan:
        """Every check of :meth:`run` before the output folder is touched: the executor's
        settings, the output path (never over an input, ``force`` or not), the headers
        and the plan, and in-memory inputs given to an executor of other processes."""
        problems = self.executor_problems()
        if problems:
            raise ConfigProblems(problems, "the executor settings")
        inputs, protected = merge_inputs(self.spec)
        check_output(out, inputs, protected=protected)
        plan = self.plan()
        if not self._runs_here:
            self._job({}, False)  # raises for in-memory inputs
        return plan

    def _progress_bar(self, plan: MergePlan, progress: bool | Progress) -> Progress:
        if isinstance(progress, Progress):
            return progress
        return Progress(
            len(plan.tensors), plan.read_bytes, label=self._progress_label(), enabled=progress
        )

    def _write_tensors(
        self,
        w: CheckpointWriter,
        runner: Any,
        plan: MergePlan,
        timings: RunTimings,
        bar: Progress,
        on_tensor: Callable[[TensorResult], None] | None,
    ) -> tuple[list[dict[str, Any] | None], str | None]:
        """Both passes on ``runner``, each result written as it arrives; ``(per-tensor
        report entries in plan order, the task-modulators file name or None)``."""
        entries: list[dict[str, Any] | None] = [None] * len(plan.tensors)
        modulators = ModulatorWriter(w.staging, self.spec.task_names)
        try:
            for index, result in self.stream(runner, timings=timings):
                w.write(result.plan.name, result.tensor)
                m = result.modulator
                if m is not None:
                    modulators.add(
                        result.plan.name, result.plan.shape, m.task_names, m.masks, m.scales
                    )
                entries[index] = result.report
                bar.update(result.plan.name, result.plan.read_bytes)
                if on_tensor is not None:
                    on_tensor(result)
            # the modulators file lists tensors in plan order, whatever order they came in
            path = modulators.finish(order=[t.name for t in plan.tensors])
        finally:
            modulators.close()
        bar.close()
        return entries, path.name if path else None

    def _copy_side_files(self, w: CheckpointWriter) -> None:
        """The base folder's non-weight files (``output.copy_files``) and, with ``vocab:
        union``, the matching tokenizer files."""
        if self.spec.output.copy_files and self.spec.base.is_dir():
            for path in non_weight_files(self.spec.base):
                w.copy_file(path)
        if self.vocab is not None:
            self.vocab.write_files(w)

    def _progress_label(self) -> str:
        ex = self.executor
        workers = getattr(ex, "workers", None)
        if ex is None or ex.name == "local":
            return "merging"
        return f"merging ({ex.name} x{workers})" if workers else f"merging ({ex.name})"

    def merge_to_dict(self) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Merge in memory, in this process: ``({name: CPU tensor}, per-tensor report entries)``."""
        state, entries = {}, []
        for result in self.results():
            state[result.plan.name] = result.tensor
            entries.append(result.report)
        return state, entries


def shard_metadata(spec: MergeSpec) -> dict[str, str]:
    """The ``__metadata__`` of every shard: which merger the default recipe used
    (``pactframe_merger``), which merger each recipe used (``pactframe_recipes``: JSON,
    recipe label -> merger name) and the fallback (``pactframe_fallback``)."""
    recipes = {r.label: r.merger.name for r in spec.recipes()}
    meta = {
        "pactframe_merger": spec.recipe.merger.name,
        "pactframe_recipes": json.dumps(recipes, sort_keys=False),
    }
    if spec.fallback is not None:
        meta["pactframe_fallback"] = spec.fallback.name
    return meta


def _add_report_files(w: CheckpointWriter, report: dict[str, Any]) -> None:
    """``merge_report.json``, the model card and the resolved config, into the output."""
    w.add_file(REPORT_FILE, json.dumps(report, indent=2) + "\n")
    w.add_file("README.md", model_card(report))
    w.add_file(CONFIG_FILE, config_yaml(report))


def _from_files(source: Any) -> bool:
    """True for a tensor source that another process can open from the spec's files
    (a checkpoint, or a LoRA adapter read on top of one)."""
    if hasattr(source, "reader"):
        return True
    inner = getattr(source, "base", None)
    return hasattr(source, "load_factors") and inner is not None and _from_files(inner)


#: kept for callers of the former private helper
_jsonable = jsonable
