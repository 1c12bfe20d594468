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

from pactframe.config import MergeSpec, load_spec, parse_config
from pactframe.contracts import Executor
from pactframe.errors import ConfigError, InputError
from pactframe.plan import MergePlan
from pactframe.registry import Registry
from pactframe.sources import DictCovarianceSource, Sources, StateDictSource
from pactframe.timings import RunTimings

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


def validate(
    config: Config,
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    executor: ExecutorLike | None = None,
    workers: int | None = None,
) -> MergePlan:
    """Check config, executor settings and checkpoint headers; return the plan (raises
    ``ConfigProblems``)."""
    from pactframe.config import ConfigProblems
    from pactframe.pipeline import MergePipeline

    spec = load_spec(config, registry=registry, base_dir=base_dir)
    pipeline = MergePipeline(with_executor(spec, executor, workers, registry=registry))
    problems = pipeline.executor_problems()
    if problems:
        raise ConfigProblems(problems, "the executor settings")
    return pipeline.plan()


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
) -> MergeResult:
    """Merge in-memory state dicts (or ``nn.Module``s); return a :class:`MergeResult`
    (the merged state dict, the report, and per-task state dicts for EMR).

    ``models`` maps task names to state dicts (a sequence gets names ``task0``,
    ``task1``...). ``config`` holds the recipe keys of a YAML config
    (``preprocessors``, ``merger``, ``rules``, ``fallback``, ``compute_dtype``,
    ``seed``, ``device``, ``output.dtype``); ``base`` and ``models`` in it are
    ignored. ``covariances`` maps a task name to ``{key: (d_in, d_in) tensor}``
    (``nn.Linear`` layout). Tensors come back on the CPU.
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
    for result in pipeline.results(timings=timings):
        state[result.plan.name] = result.tensor
        entries.append(result.report)
        m = result.merged
        if m is not None and m.is_task_conditioned:
            assert m.task_masks is not None and m.task_scales is not None
            masks = tuple(mask.to("cpu", torch.bool) for mask in m.task_masks)
            modulators[result.plan.name] = (masks, tuple(float(x) for x in m.task_scales))
    report = pipeline.report(plan, entries, timings.finish(), shards=[])
    return MergeResult(state, report, names, sources.base, modulators)
