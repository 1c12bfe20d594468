"""The embedding API: merges from Python, without the command line.

    from pactframe.api import merge, merge_state_dicts, validate

    report = merge("config.yaml", "out/", force=True)          # files -> files
    report = merge("config.yaml", "out/", executor="processes", workers=4)
    plan = validate({"base": ..., "models": [...], "merger": "ties"}, base_dir=".")
    result = merge_state_dicts(base_sd, {"sst2": sd1, "cola": sd2},
                               {"merger": {"name": "task_arithmetic", "scaling": 0.3}})
    model.load_state_dict(result.state_dict)      # result.report: the merge report
    sst2_only = result.task_state_dict("sst2")    # task-conditioned merges (emr)

``config`` is a YAML path, a dict (the same keys as the YAML) or a
:class:`~pactframe.config.MergeSpec`. ``registry`` lets embedded systems bring
their own components without installing entry points.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from pactframe.config import (
    ConfigAnalysis,
    ConfigProblems,
    MergeSpec,
    analyse_config,
    load_spec,  # also pactframe.api.load_spec (it lives in pactframe.config)
    parse_config,
    read_config_data,
)
from pactframe.contracts import Executor
from pactframe.errors import ConfigError, InputError
from pactframe.plan import MergePlan, check_sources, make_plan
from pactframe.registry import Registry
from pactframe.sources import DictCovarianceSource, Sources, StateDictSource
from pactframe.timings import RunTimings
from pactframe.types import MergedTensor

Config = MergeSpec | Mapping[str, Any] | str | os.PathLike[str]
StateLike = Mapping[str, torch.Tensor] | torch.nn.Module
ExecutorLike = str | Mapping[str, Any] | Executor


def with_executor(
    spec: MergeSpec,
    executor: ExecutorLike | None = None,
    workers: int | None = None,
    *,
    registry: Registry | None = None,
) -> MergeSpec:
    """``spec`` with its executor replaced (``--executor NAME --workers N``).

    ``executor``: a registered name, a mapping ``{"name": ..., ...}`` or an
    :class:`~pactframe.contracts.Executor`. ``workers`` alone changes the
    configured executor's ``workers``; with no executor configured (or ``local``)
    it means ``processes`` with that many workers.
    """
    if executor is None and workers is None:
        return spec
    from pactframe.registry import build_registry

    built: Any
    if executor is not None:
        built = (registry or build_registry()).build("executor", executor)
    elif spec.executor is not None and spec.executor.name != "local":
        built = spec.executor
    else:
        built = (registry or build_registry()).create("executor", "processes")
    if workers is not None:
        names = {f.name for f in attrs.fields(type(built))} if attrs.has(type(built)) else set()
        if "workers" not in names:
            raise ConfigError(
                f"The {built.name!r} executor has no 'workers' setting (it runs in one "
                "process); use --executor processes or --executor ray with --workers."
            )
        try:
            built = attrs.evolve(built, workers=workers)  # type: ignore[misc]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--workers {workers!r}: {exc}") from exc
    return attrs.evolve(spec, executor=built)


@attrs.frozen
class Validation:
    """What :func:`check` found: the plan (``None`` when the checks could not reach it),
    every problem, and the spec (``None`` when the config has problems)."""

    plan: MergePlan | None
    problems: tuple[str, ...]
    spec: MergeSpec | None

    @property
    def ok(self) -> bool:
        return self.plan is not None and not self.problems


def _analyse(
    config: Config, registry: Registry | None, base_dir: str | os.PathLike[str] | None
) -> ConfigAnalysis:
    if isinstance(config, MergeSpec):
        return ConfigAnalysis(config, (), config.base, config.models)
    if isinstance(config, Mapping):
        return analyse_config(config, registry=registry, base_dir=base_dir)
    data, notes = read_config_data(config)  # a mergekit config is converted, with notes
    path = Path(config)
    found = analyse_config(data, registry=registry, base_dir=path.parent, source=path)
    if found.spec is not None and notes:
        found = attrs.evolve(found, spec=attrs.evolve(found.spec, notes=notes))
    return found


def check(
    config: Config,
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    executor: ExecutorLike | None = None,
    workers: int | None = None,
) -> Validation:
    """Every problem of a merge, collected, without merging (``pactframe validate``):
    the config's, the executor's settings, then the files, headers and plan (checked
    even when the recipe part of the config is wrong). Only an unreadable config file
    or a broken plugin raises (a ``PactframeError``); everything else is in
    ``problems``. No tensor is merged, nothing is written."""
    from pactframe.errors import PactframeError
    from pactframe.pipeline import MergePipeline

    found = _analyse(config, registry, base_dir)
    problems = list(found.problems)
    spec = found.spec
    if spec is not None:
        try:
            spec = with_executor(spec, executor, workers, registry=registry)
        except PactframeError as exc:
            problems.append(f"executor: {exc}")
        else:
            if spec.executor is not None:  # before any file is opened
                problems += [f"executor {spec.executor.name!r}: {p}" for p in spec.executor.check()]
    if found.base is None or not found.models:
        return Validation(None, tuple(problems), spec)
    paths_ok = (
        found.base.exists()
        and all(m.path.exists() for m in found.models)
        and all(m.covariance is None or m.covariance.exists() for m in found.models)
    )
    if not paths_ok:  # the config's parser has named each missing path
        return Validation(None, tuple(problems), spec)
    copy_files = spec.output.copy_files if spec is not None else True
    sources, open_problems = Sources.open(found.base, found.models, copy_files=copy_files)
    problems += open_problems
    if sources is None:
        return Validation(None, tuple(problems), spec)
    if spec is None:  # the recipe is wrong; the files can still be checked
        problems += check_sources([m.name for m in found.models], sources)
        return Validation(None, tuple(problems), None)
    try:  # the device, the fallback, vocabulary handling: as a merge builds them
        pipeline = MergePipeline(spec, sources=sources)
        plan, plan_problems = make_plan(spec, pipeline.sources)
    except ConfigProblems as exc:
        return Validation(None, tuple(problems + exc.problems), spec)
    except PactframeError as exc:
        return Validation(None, tuple([*problems, str(exc)]), spec)
    return Validation(plan, tuple(problems + plan_problems), spec)


def validate(
    config: Config,
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    executor: ExecutorLike | None = None,
    workers: int | None = None,
) -> MergePlan:
    """Check config, executor settings and checkpoint headers; return the plan, or raise
    ``ConfigProblems`` listing every problem :func:`check` found."""
    found = check(config, registry=registry, base_dir=base_dir, executor=executor, workers=workers)
    if found.problems or found.plan is None:
        source = None if isinstance(config, Mapping) else getattr(found.spec, "source", None)
        if source is None and isinstance(config, (str, os.PathLike)):
            source = config
        raise ConfigProblems(list(found.problems), str(source) if source else "the merge")
    return found.plan


def merge(
    config: Config,
    out: str | os.PathLike[str],
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    force: bool = False,
    progress: bool = False,
    executor: ExecutorLike | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Merge the checkpoints a config names into ``out``; return the merge report.

    ``executor``/``workers`` override the config's ``executor`` (see
    :func:`with_executor` and ``docs/executors.md``)."""
    from pactframe.pipeline import MergePipeline

    spec = load_spec(config, registry=registry, base_dir=base_dir)
    spec = with_executor(spec, executor, workers, registry=registry)
    return MergePipeline(spec, device=device).run(out, force=force, progress=progress)


@attrs.frozen(eq=False)
class MergeResult(Mapping[str, torch.Tensor]):
    """What :func:`merge_state_dicts` returns.

    ``state_dict``: the merged ``{name: CPU tensor}`` (the result also reads as that
    mapping, so ``result[name]`` and ``model.load_state_dict(result)`` work);
    ``report``: the merge report (the ``merge_report.json`` a file merge writes,
    without shards); for a task-conditioned merge (EMR), ``task_state_dict(task)``
    materialises task ``task``'s weights ``base + s_t * (m_t * (merged - base))``
    (as ``pactframe materialize`` does on files).
    """

    state_dict: dict[str, torch.Tensor]
    report: dict[str, Any]
    task_names: tuple[str, ...]
    _base: Any = attrs.field(repr=False)
    _modulators: dict[str, tuple[tuple[torch.Tensor, ...], tuple[float, ...]]] = attrs.field(
        repr=False
    )
    #: with ``keep_merged=True``: each tensor's :class:`~pactframe.types.MergedTensor`
    #: (the merged delta on the compute device, masks and scales), ``None`` for tensors
    #: copied from the base; empty otherwise
    merged: dict[str, MergedTensor | None] = attrs.field(factory=dict, repr=False)

    @property
    def is_task_conditioned(self) -> bool:
        return bool(self._modulators)

    def task_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """Task ``task``'s own state dict (equal to ``state_dict`` for a plain merge)."""
        if task not in self.task_names:
            raise InputError(
                f"Unknown task {task!r}; this merge has tasks {list(self.task_names)}."
            )
        index = self.task_names.index(task)
        out = {}
        for key, merged in self.state_dict.items():
            mod = self._modulators.get(key)
            if mod is None:
                out[key] = merged
                continue
            masks, scales = mod
            work = torch.float64 if merged.dtype == torch.float64 else torch.float32
            b = self._base.load(key).to(work)
            delta = merged.to(work) - b
            out[key] = (b + scales[index] * (masks[index].to(work) * delta)).to(merged.dtype)
        return out

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.state_dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.state_dict)

    def __len__(self) -> int:
        return len(self.state_dict)


def merge_state_dicts(
    base: StateLike,
    models: Mapping[str, StateLike] | Sequence[StateLike],
    config: Mapping[str, Any] | MergeSpec,
    *,
    covariances: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    registry: Registry | None = None,
    device: str | None = None,
    keep_merged: bool = False,
) -> MergeResult:
    """Merge in-memory state dicts (or ``nn.Module``s); return a :class:`MergeResult`
    (the merged state dict, the report, and per-task state dicts for EMR).

    ``models`` maps task names to state dicts (a sequence gets names ``task0``,
    ``task1``...). ``config`` holds the recipe keys of a YAML config
    (``preprocessors``, ``merger``, ``rules``, ``fallback``, ``compute_dtype``,
    ``seed``, ``device``, ``output.dtype``); ``base`` and ``models`` in it are
    ignored. ``covariances`` maps a task name to ``{key: (d_in, d_in) tensor}``
    (``nn.Linear`` layout). Tensors come back on the CPU. ``keep_merged`` keeps each
    tensor's merged delta (:attr:`MergeResult.merged`), e.g. to rescale it afterwards.
    """
    from pactframe.pipeline import MergePipeline

    if not isinstance(models, Mapping):
        models = {f"task{i}": m for i, m in enumerate(models)}
    if not models:
        raise InputError(
            "merge_state_dicts: 'models' is empty; give at least one fine-tuned model."
        )
    if isinstance(config, MergeSpec):
        spec = config
    else:
        data = {k: v for k, v in config.items() if k not in ("base", "models")}
        data["base"] = "<memory>"
        data["models"] = [{"name": name, "path": f"<memory:{name}>"} for name in models]
        spec = parse_config(data, registry=registry, base_dir=Path.cwd(), check_files=False)
    names = spec.task_names
    unknown = sorted(set(covariances or {}) - set(names))
    if unknown:
        raise InputError(
            f"merge_state_dicts: covariances given for unknown task(s) {unknown}; the tasks are "
            f"{list(names)}."
        )
    sources = Sources(
        StateDictSource(base, "base state dict"),
        tuple(StateDictSource(models[n], f"state dict of task {n!r}") for n in names),
        tuple(
            DictCovarianceSource(covariances[n], f"covariances of task {n!r}")
            if covariances and n in covariances
            else None
            for n in names
        ),
    )
    timings = RunTimings()
    pipeline = MergePipeline(spec, sources=sources, device=device)
    plan = pipeline.plan()
    timings.plan_s = timings.elapsed()
    state: dict[str, torch.Tensor] = {}
    entries = []
    modulators = {}
    merged: dict[str, MergedTensor | None] = {}
    for result in pipeline.results(timings=timings):
        state[result.plan.name] = result.tensor
        entries.append(result.report)
        m = result.merged
        if keep_merged:
            merged[result.plan.name] = m
        if m is not None and m.is_task_conditioned:
            assert m.task_masks is not None and m.task_scales is not None
            masks = tuple(mask.to("cpu", torch.bool) for mask in m.task_masks)
            modulators[result.plan.name] = (masks, tuple(float(x) for x in m.task_scales))
    report = pipeline.report(plan, entries, timings.finish(), shards=[])
    return MergeResult(state, report, names, sources.base, modulators, merged)
