"""The embedding API: merges from Python, without the command line.

    from pactframe.api import merge, merge_state_dicts, validate

    report = merge("config.yaml", "out/", force=True)          # files -> files
    plan = validate({"base": ..., "models": [...], "merger": "ties"}, base_dir=".")
    state = merge_state_dicts(base_sd, {"sst2": sd1, "cola": sd2},
                              {"merger": {"name": "task_arithmetic", "scaling": 0.3}})

``config`` is a YAML path, a dict (the same keys as the YAML) or a
:class:`~pactframe.config.MergeSpec`. ``registry`` lets embedded systems bring
their own components without installing entry points.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pactframe.config import MergeSpec, load_config, parse_config
from pactframe.errors import InputError
from pactframe.plan import MergePlan
from pactframe.registry import Registry
from pactframe.sources import DictCovarianceSource, Sources, StateDictSource

Config = MergeSpec | Mapping[str, Any] | str | os.PathLike[str]
StateLike = Mapping[str, torch.Tensor] | torch.nn.Module


def load_spec(
    config: Config,
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    check_files: bool = True,
) -> MergeSpec:
    """A :class:`MergeSpec` from a path, a dict or a spec."""
    if isinstance(config, MergeSpec):
        return config
    if isinstance(config, Mapping):
        return parse_config(config, registry=registry, base_dir=base_dir, check_files=check_files)
    return load_config(config, registry=registry, check_files=check_files)


def validate(
    config: Config,
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> MergePlan:
    """Check config and checkpoint headers; return the plan (raises ``ConfigProblems``)."""
    from pactframe.pipeline import MergePipeline

    return MergePipeline(load_spec(config, registry=registry, base_dir=base_dir)).plan()


def merge(
    config: Config,
    out: str | os.PathLike[str],
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Merge the checkpoints a config names into ``out``; return the merge report."""
    from pactframe.pipeline import MergePipeline

    spec = load_spec(config, registry=registry, base_dir=base_dir)
    return MergePipeline(spec, device=device).run(out, force=force, progress=progress)


def merge_state_dicts(
    base: StateLike,
    models: Mapping[str, StateLike] | Sequence[StateLike],
    config: Mapping[str, Any] | MergeSpec,
    *,
    covariances: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    registry: Registry | None = None,
    device: str | None = None,
) -> dict[str, torch.Tensor]:
    """Merge in-memory state dicts (or ``nn.Module``s); return the merged state dict.

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
    state, _ = MergePipeline(spec, sources=sources, device=device).merge_to_dict()
    return state
