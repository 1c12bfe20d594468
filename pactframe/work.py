"""The work units of a merge and what a worker does with them.

The pipeline cuts a merge into independent units and an executor runs them
(:mod:`pactframe.contracts` ``Executor``):

- a :class:`TensorUnit` per tensor name for the main pass: read base + T
  fine-tuned tensors (+ covariances) from storage, place them on the worker's
  device in the compute dtype, form the task vectors, run the preprocessors and
  the merger (or the fallback, or a plain copy), the tensor-level evaluators, and
  return ``base + delta`` in the output dtype on the CPU with its report entry;
- a :class:`PrepassUnit` per contiguous run of tensors for a two-pass component:
  the same reading and the preprocessors before it, then ``prepare_map`` (or the
  whole ``prepare`` when the component has no split form).

A :class:`MergeJob` carries everything a worker needs besides the unit (the
spec with its built components, the prepass states, the device, the sources or
the paths to open), is picklable, and is sent once per pass. Workers open the
checkpoints themselves, so tensors never travel through the driver on their way
in. Tensor seeds are ``derive_seed(run_seed, name)``: a tensor's result does not
depend on which worker merged it, nor when.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from pactframe.config import ConfigProblems, MergeSpec, RecipeSpec
from pactframe.contracts import Merger, splits_prepass
from pactframe.device import COMPUTE_DTYPES, peak_rss_bytes, resolve_device
from pactframe.errors import ConfigError, InputError
from pactframe.plan import COPY, RECIPE, TensorPlan
from pactframe.seeding import derive_seed
from pactframe.sources import Sources
from pactframe.types import LayerBundle, LowRank, MergedTensor


# ------------------------------------------------------------------ the worker's identity
@attrs.frozen
class WorkerInfo:
    """Who runs units in this process: a label for the report, an optional device
    (a ``devices`` pin of the executor; ``None``: the merge's device)."""

    label: str
    device: str | None = None


_CURRENT: list[WorkerInfo] = []
_BASELINE_RSS: list[int] = []  # this process's RSS before its first unit


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return peak_rss_bytes()


def set_worker(info: WorkerInfo | None) -> None:
    """Called by an executor in each worker process before it runs units."""
    _CURRENT[:] = [] if info is None else [info]


def current_worker() -> WorkerInfo:
    if _CURRENT:
        return _CURRENT[0]
    return WorkerInfo(f"{socket.gethostname()}:{os.getpid()}")


# ------------------------------------------------------------------ units and results
@attrs.frozen
class TensorUnit:
    """Merge one tensor: its plan (name, shape, dtypes, recipe index, route) and seed."""

    plan: TensorPlan
    seed: int

    @property
    def label(self) -> str:
        return f"tensor {self.plan.name!r}"


@attrs.frozen
class PrepassUnit:
    """The prepass statistics of a contiguous run of tensors (plan order)."""

    tensors: tuple[TensorPlan, ...]
    split: bool  # True: prepare_map over the run; False: the whole prepare()

    @property
    def label(self) -> str:
        if not self.tensors:
            return "prepass over no tensor"
        first, last = self.tensors[0].name, self.tensors[-1].name
        what = f"tensor {first!r}" if first == last else f"tensors {first!r} .. {last!r}"
        return f"prepass of {what}"


@attrs.frozen(eq=False)
class Modulator:
    """Per-task masks (CPU bool) and scales of a task-conditioned merge of one tensor."""

    task_names: tuple[str, ...]
    masks: tuple[torch.Tensor, ...]
    scales: tuple[float, ...]


@attrs.frozen(eq=False)
class TensorResult:
    """One merged tensor (CPU, output dtype), what the report says about it, and where
    it was computed. ``merged``, ``original`` and ``processed`` are kept only by
    in-process runs that ask for them (``MergePipeline.results``)."""

    plan: TensorPlan
    tensor: torch.Tensor
    report: dict[str, Any]
    modulator: Modulator | None = None
    worker: str = ""
    seconds: float = 0.0
    worker_peak_rss: int = 0
    device: str = ""
    worker_baseline_rss: int = 0  # the worker's RSS before its first unit
    merged: MergedTensor | None = None  # on the device; None for copies and remote runs
    original: LayerBundle | None = None  # as read (device, compute dtype)
    processed: LayerBundle | None = None  # after the preprocessors
    #: the merged delta (float32, CPU) when the job asks for it (``MergeJob.deltas``:
    #: adapter output, docs/lora.md); ``None`` for copies
    delta: torch.Tensor | None = None


@attrs.frozen(eq=False)
class PrepassResult:
    partial: Any
    worker: str
    seconds: float
    worker_peak_rss: int
    device: str = ""
    worker_baseline_rss: int = 0


@attrs.define(eq=False)
class Inputs:
    """CPU tensors of one name, as read (mutable: :meth:`TensorWorker.bundle` consumes
    ``finetuned``)."""

    base: torch.Tensor
    # consumed (emptied) by bundle() to free memory early; an adapter gives its task
    # vector instead: LowRank factors, or None for a zero task vector (docs/lora.md)
    finetuned: list[torch.Tensor | LowRank | None]
    covariances: tuple[torch.Tensor | None, ...] | None
    owned: bool = False  # True when the tensors are fresh buffers nobody else holds


def open_files(
    spec: MergeSpec, where: str = "the checkpoints", *, check_covariances: bool = True
) -> Sources:
    """The files ``spec`` names, opened with the checks on read (the ``nonfinite``
    policy, symlinks among the base folder's copied files); no vocabulary handling.
    ``check_covariances``: load and check every covariance now (the driver, before
    any tensor math); a worker passes ``False`` and checks each covariance it loads,
    instead of every worker loading and checking all of them again."""
    sources, problems = Sources.open(
        spec.base,
        spec.models,
        nonfinite=spec.nonfinite,
        copy_files=spec.output.copy_files,
        check_covariances=check_covariances,
    )
    if problems or sources is None:
        raise ConfigProblems(problems, where)
    return sources


def open_sources(
    spec: MergeSpec, where: str = "the checkpoints", *, check_covariances: bool = True
) -> Sources:
    """The sources of the files ``spec`` names, opened as every process of a merge opens
    them: the driver (to plan) and each worker (to read its own tensors) call this, so
    whatever wraps the sources (checks on read, vocabulary handling) belongs here."""
    from pactframe.vocab import apply_vocab

    return apply_vocab(spec, open_files(spec, where, check_covariances=check_covariances))[0]


# ------------------------------------------------------------------ the job
@attrs.frozen(eq=False)
class MergeJob:
    """Everything a worker needs to run units of one pass (picklable).

    ``sources`` is ``None`` for executors that run elsewhere: each worker then
    opens the files the spec names. ``stage`` is ``(recipe index, position)`` of
    the two-pass component whose prepass this job computes, ``None`` for the main
    pass. ``keep`` keeps the bundles and the merged tensor in results (in-process
    diagnostics only). ``deltas`` returns each merged delta in float32 on the CPU
    with its result (what ``output.format: lora`` truncates, under any executor).
    """

    spec: MergeSpec
    states: Mapping[tuple[int, int], Any]
    device: str
    sources: Sources | None = None
    stage: tuple[int, int] | None = None
    keep: bool = False
    token: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    deltas: bool = False

    def __getstate__(self) -> dict[str, Any]:
        if self.sources is not None:
            raise ConfigError(
                "This merge reads in-memory tensors, which cannot be sent to worker processes; "
                "use the 'local' executor (merge_state_dicts always runs locally), or save the "
                "checkpoints as safetensors files."
            )
        return {f.name: getattr(self, f.name) for f in attrs.fields(type(self))}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)

    @property
    def prefetch(self) -> int:
        return self.spec.prefetch

    def worker(self) -> TensorWorker:
        """The :class:`TensorWorker` of this job in this process (built once per job)."""
        cached = _WORKER_CACHE.get("job")
        if cached is not None and cached[0] == self.token:
            return cached[1]
        worker = TensorWorker(self)
        _WORKER_CACHE["job"] = (self.token, worker)
        return worker

    # a unit is run by calling the job with it (executors need nothing else)
    def __call__(self, unit: Any) -> Any:
        worker = self.worker()
        if isinstance(unit, TensorUnit):
            return worker.compute(unit, worker.read(unit))
        if isinstance(unit, PrepassUnit):
            return worker.prepass(unit)
        raise TypeError(f"MergeJob cannot run a {type(unit).__name__}.")

    def read(self, unit: TensorUnit) -> Inputs:
        """The reading half of ``self(unit)`` (in-process executors read ahead on a thread)."""
        return self.worker().read(unit)

    def compute(self, unit: TensorUnit, inputs: Inputs) -> TensorResult:
        """The computing half of ``self(unit)``."""
        return self.worker().compute(unit, inputs)


_WORKER_CACHE: dict[str, tuple[str, TensorWorker]] = {}


class TensorWorker:
    """Runs units of one :class:`MergeJob` in one process (sources opened once)."""

    def __init__(self, job: MergeJob) -> None:
        if not _BASELINE_RSS:
            _BASELINE_RSS.append(current_rss_bytes())
        self.job = job
        self.spec = job.spec
        info = current_worker()
        self.label = info.label
        self.device = resolve_device(info.device or job.device)
        self.compute_dtype = COMPUTE_DTYPES[job.spec.compute_dtype]
        self.recipes = job.spec.recipes()
        self._sources = job.sources

    @property
    def sources(self) -> Sources:
        if self._sources is None:
            self._sources = open_sources(  # the driver checked every covariance already
                self.spec, f"the checkpoints (worker {self.label})", check_covariances=False
            )
        return self._sources

    # reading and placing -------------------------------------------------
    def read(self, unit: TensorUnit | TensorPlan) -> Inputs:
        t = unit.plan if isinstance(unit, TensorUnit) else unit
        src = self.sources
        base = src.base.load(t.name)
        fts = [read_task(m, t.name) for m in src.models] if t.handler != COPY else []
        covs = None
        if t.covariance_tasks and t.handler != COPY:
            covs = tuple(
                None if c is None or t.name not in c.entries() else c.load(t.name)
                for c in src.covariances
            )
        return Inputs(base, fts, covs, owned=all(getattr(m, "fresh", False) for m in src.models))

    def bundle(self, t: TensorPlan, inputs: Inputs) -> LayerBundle:
        dev, dt = self.device, self.compute_dtype
        base = inputs.base.to(dev, dt)
        tvs = []
        owned = inputs.owned
        while inputs.finetuned:  # drop each fine-tuned tensor once its task vector exists
            ft = inputs.finetuned.pop(0)
            if ft is None or isinstance(ft, LowRank):  # an adapter's task vector (docs/lora.md)
                placed = None if ft is None else ft.map(lambda x: x.to(dev, dt))
                tvs.append(zero_task_vector(base) if placed is None else placed)
                continue
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

    # two-pass components -------------------------------------------------
    def prepass(self, unit: PrepassUnit) -> PrepassResult:
        start = time.perf_counter()
        assert self.job.stage is not None, "a prepass unit needs a prepass job"
        r_index, pos = self.job.stage
        recipe = self.recipes[r_index]
        component: Any = [*recipe.preprocessors, recipe.merger][pos]
        bundles = self._prepass_bundles(recipe, r_index, pos, unit.tensors)
        if unit.split and splits_prepass(component):
            partial = component.prepare_map(bundles)
        else:
            partial = component.prepare(bundles)
        seconds = time.perf_counter() - start
        return PrepassResult(
            partial, self.label, seconds, peak_rss_bytes(), str(self.device), _BASELINE_RSS[0]
        )

    def _prepass_bundles(
        self, recipe: RecipeSpec, r_index: int, upto: int, tensors: tuple[TensorPlan, ...]
    ) -> Iterator[LayerBundle]:
        for t in tensors:
            bundle = self.bundle(t, self.read(t))
            for pos in range(upto):
                bundle = recipe.preprocessors[pos].preprocess(
                    bundle, self.job.states.get((r_index, pos))
                )
            yield bundle

    # the main pass -------------------------------------------------------
    def compute(self, unit: TensorUnit, inputs: Inputs) -> TensorResult:
        """One tensor of the plan: preprocess, merge, add to the base, describe."""
        start = time.perf_counter()
        t = unit.plan
        entry: dict[str, Any] = {
            "name": t.name,
            "shape": list(t.shape),
            "dtype": str(t.dtype).replace("torch.", ""),
            "handler": t.handler,
            "route": t.route,
        }
        if t.handler == COPY:
            entry["reason"] = t.reason
            return self._result(t, inputs.base.to(t.out_dtype), entry, None, start)
        bundle = self.bundle(t, inputs)
        merger, processed, state = self._preprocessed(t, bundle)
        merged = self._checked_merge(t, merger, processed, state)
        out = self._merged_output(t, bundle, merged)
        self._describe(entry, t, merger, bundle, processed, merged)
        modulator = self._modulator(entry, merged)
        delta = merged.delta.detach().to("cpu", torch.float32) if self.job.deltas else None
        if self.job.keep:
            return self._result(
                t, out, entry, modulator, start, merged, bundle, processed, delta=delta
            )
        return self._result(t, out, entry, modulator, start, delta=delta)

    def _preprocessed(
        self, t: TensorPlan, bundle: LayerBundle
    ) -> tuple[Merger, LayerBundle, Any]:
        """``(merger, preprocessed bundle, its prepass state)`` along the route the plan
        chose, once (:mod:`pactframe.plan`): the recipe's preprocessors and merger, or
        the fallback merger on the plain bundle."""
        if t.handler != RECIPE:
            if self.spec.fallback is None:
                raise ConfigError(
                    f"Tensor {t.name!r} needs the fallback merger ({t.reason}), "
                    "but fallback is null. Set fallback: average."
                )
            return self.spec.fallback, bundle, None
        recipe = self.recipes[t.recipe_index]
        states = self.job.states
        processed = bundle
        for pos, pre in enumerate(recipe.preprocessors):
            processed = pre.preprocess(processed, states.get((t.recipe_index, pos)))
        state = states.get((t.recipe_index, len(recipe.preprocessors)))
        return recipe.merger, processed, state

    @staticmethod
    def _checked_merge(
        t: TensorPlan, merger: Merger, processed: LayerBundle, state: Any
    ) -> MergedTensor:
        """``merger.merge`` with its result checked against the plan's shape."""
        merged = merger.merge(processed, state)
        if not isinstance(merged, MergedTensor) or tuple(merged.delta.shape) != t.shape:
            got = tuple(merged.delta.shape) if isinstance(merged, MergedTensor) else type(merged)
            raise InputError(
                f"Tensor {t.name!r}: merger {merger.name!r} returned {got}; expected a "
                f"MergedTensor with a delta of shape {t.shape}."
            )
        return merged

    @staticmethod
    def _merged_output(t: TensorPlan, bundle: LayerBundle, merged: MergedTensor) -> torch.Tensor:
        """``base + delta`` in the compute dtype, rounded once into the output dtype: one
        kernel writes the output buffer (no compute-dtype temporary to cast afterwards)."""
        out = torch.empty(t.shape, dtype=t.out_dtype, device=bundle.base.device)
        torch.add(bundle.base, merged.delta.to(bundle.base.dtype), out=out)
        return out.to("cpu")

    def _describe(
        self,
        entry: dict[str, Any],
        t: TensorPlan,
        merger: Merger,
        bundle: LayerBundle,
        processed: LayerBundle,
        merged: MergedTensor,
    ) -> None:
        """The report entry: merger, route reason, component records, evaluators."""
        entry["merger"] = merger.name
        if t.reason:
            entry["reason"] = t.reason
        records = [*processed.records, *merged.records]
        if records:
            entry["records"] = [{"source": r.source, "data": jsonable(r.data)} for r in records]
        evals = {}
        for ev in self.spec.evaluators:
            evals[ev.name] = jsonable(ev.evaluate_tensor(bundle, processed, merged))
        if evals:
            entry["evaluators"] = evals

    @staticmethod
    def _modulator(entry: dict[str, Any], merged: MergedTensor) -> Modulator | None:
        """The task-conditioned part of a merge (EMR's masks and scales), on the CPU."""
        if not merged.is_task_conditioned:
            return None
        entry["task_conditioned"] = True
        assert merged.task_names and merged.task_masks and merged.task_scales
        return Modulator(
            tuple(merged.task_names),
            tuple(m.detach().to("cpu", torch.bool) for m in merged.task_masks),
            tuple(float(s) for s in merged.task_scales),
        )

    def _result(
        self,
        t: TensorPlan,
        out: torch.Tensor,
        entry: dict[str, Any],
        modulator: Modulator | None,
        start: float,
        merged: MergedTensor | None = None,
        original: LayerBundle | None = None,
        processed: LayerBundle | None = None,
        *,
        delta: torch.Tensor | None = None,
    ) -> TensorResult:
        seconds = time.perf_counter() - start
        if t.handler != COPY:
            entry["seconds"] = round(seconds, 6)
        return TensorResult(
            t,
            out,
            entry,
            modulator,
            self.label,
            seconds,
            peak_rss_bytes(),
            str(self.device),
            _BASELINE_RSS[0],
            merged,
            original,
            processed,
            delta,
        )


def zero_task_vector(base: torch.Tensor) -> torch.Tensor | LowRank:
    """A tensor an adapter leaves alone: rank-0 factors for a matrix (free for the
    factored components; materialises to zeros), else zeros."""
    if base.ndim == 2:
        return LowRank(base.new_zeros((base.shape[0], 0)), base.new_zeros((0, base.shape[1])))
    return torch.zeros_like(base)


def read_task(model: Any, name: str) -> torch.Tensor | LowRank | None:
    """A fine-tuned tensor, or from a LoRA adapter source its factored task vector
    (``LowRank``) or ``None`` where the adapter leaves the tensor as in the base."""
    if hasattr(model, "load_factors"):
        factors = model.load_factors(name)
        if factors is not None:
            return factors
        if model.untouched(name):
            return None
    return model.load(name)


def jsonable(value: Any) -> Any:
    """Tensors and numpy scalars -> lists/floats, so records serialise to JSON."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "item") and hasattr(value, "dtype"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
