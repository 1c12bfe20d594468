"""Memory under the processes executor: each worker's growth over its RSS before its
first unit is bounded by the largest tensor's working set, not by the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pactframe.config import parse_config
from pactframe.pipeline import MergePipeline
from tests.integration._pipeline_helpers import test_registry

LAYERS, ROWS, COLS = 48, 512, 512


def _write(root: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    for m in range(3):
        folder = root / f"m{m}"
        folder.mkdir(parents=True)
        weight_map = {}
        for shard in range(LAYERS // 8):
            part = {}
            for i in range(shard * 8, shard * 8 + 8):
                part[f"layers.{i}.weight"] = torch.randn(ROWS, COLS, generator=g)
                part[f"layers.{i}.bias"] = torch.randn(ROWS, generator=g)
            name = f"model-{shard:05d}.safetensors"
            save_file(part, str(folder / name))
            weight_map.update(dict.fromkeys(part, name))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return {
        "base": str(root / "m0"),
        "models": [{"name": n, "path": str(root / f"m{i + 1}")} for i, n in enumerate("ab")],
        "merger": "t_sum",
        "fallback": "t_mean",
        "output": {"shard_size": "8MB"},
        "executor": {"name": "processes", "workers": 2, "threads": 1},
    }


@pytest.mark.slow
def test_worker_memory_is_bounded_by_the_largest_tensor_not_the_model(tmp_path):
    spec = parse_config(_write(tmp_path), registry=test_registry(with_builtins=True))
    pipeline = MergePipeline(spec)
    plan = pipeline.plan()
    estimate = plan.memory_estimate()["working_set_bytes"]
    report = pipeline.run(tmp_path / "out")
    model_bytes = LAYERS * (ROWS * COLS + ROWS) * 4
    margin = 48 * 2**20  # allocator slack, independent of the model size
    workers = report["executor"]["workers"]
    assert len(workers) == 2
    for label, w in workers.items():
        extra = w["peak_rss_bytes"] - w["baseline_rss_bytes"]
        assert 0 <= extra <= estimate + margin, (label, extra, estimate)
        assert extra < model_bytes  # less than ONE of the three checkpoints
