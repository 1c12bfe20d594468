"""The benchmark's models as files on disk, merged by the real pipeline.

``pactframe demo`` writes the base and fine-tuned checkpoints (safetensors)
and each task's covariance file, runs :func:`pactframe.api.merge` on a config
that names them, and reads the merged checkpoint back for evaluation; a
task-conditioned merge (EMR) is materialised per task with
:func:`pactframe.modulators.materialize`, as a user would.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pactframe_bench.suite import BuiltSuite, State


def write_models(suite: BuiltSuite, folder: Path) -> dict[str, Any]:
    """Write base and fine-tuned models (and covariances); return the config's model part."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    base_dir = folder / "base"
    base_dir.mkdir(exist_ok=True)
    save_file(suite.base_state(), str(base_dir / "model.safetensors"))
    models = []
    for task in suite.task_names:
        task_dir = folder / f"ft-{task}"
        task_dir.mkdir(exist_ok=True)
        save_file(suite.finetuned_state(task), str(task_dir / "model.safetensors"))
        entry = {"name": task, "path": str(task_dir)}
        cov = suite.covariance_file(task)
        if cov is not None and Path(cov).exists():
            shutil.copyfile(cov, folder / f"cov-{task}.safetensors")
            entry["covariance"] = str(folder / f"cov-{task}.safetensors")
        models.append(entry)
    return {"base": str(base_dir), "models": models}


def merge_files(
    models: Mapping[str, Any], recipe: Mapping[str, Any], out: Path, *, uses_covariances: bool
) -> tuple[dict[str, Any], float]:
    """``pactframe.api.merge`` of ``recipe`` over the files; returns (report, wall seconds)."""
    from pactframe.api import merge

    entries = [
        dict(m) if uses_covariances else {k: v for k, v in m.items() if k != "covariance"}
        for m in models["models"]
    ]
    config = {**recipe, "base": models["base"], "models": entries}
    start = time.perf_counter()
    report = merge(config, out, force=True)
    return report, time.perf_counter() - start


def _read(folder: Path) -> State:
    from pactframe.io.reader import CheckpointReader

    reader = CheckpointReader(folder, role="merged model")
    # "<key>::mask" / "::scale" entries belong to the task modulators, not the model.
    return {k: reader.load(k) for k in reader.keys() if "::" not in k}


def load_merged(out: Path, task_names: tuple[str, ...], base: Path) -> State | dict[str, State]:
    """The merged state, or task -> materialised state for a task-conditioned merge."""
    from pactframe.modulators import MODULATOR_FILE, materialize

    if not (out / MODULATOR_FILE).exists():
        return _read(out)
    states = {}
    for task in task_names:
        dest = out.parent / f"{out.name}-task-{task}"
        materialize(out, task, dest, base=base, force=True)
        states[task] = _read(dest)
        shutil.rmtree(dest)
    return states


def to_float(state: Mapping[str, torch.Tensor]) -> State:
    return {k: v.float() for k, v in state.items()}
