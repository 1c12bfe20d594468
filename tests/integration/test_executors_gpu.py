"""GPU pinning of the processes executor (skipped where no CUDA device is present)."""

from __future__ import annotations

import json

import pytest
import torch

from pactframe.api import load_spec
from pactframe.example import TASKS, write_example
from pactframe.pipeline import REPORT_FILE, MergePipeline
from pactframe.registry import build_registry
from tests.integration._pipeline_helpers import load_output


@pytest.mark.gpu
def test_processes_pinned_round_robin_to_every_gpu_match_the_local_gpu_merge(tmp_path):
    root = write_example(tmp_path / "ex").parent
    config = {
        "base": "./base",
        "models": [{"name": t, "path": f"./ft-{t}"} for t in TASKS],
        "preprocessors": [{"name": "pact", "decomposer": "randomized_svd"}],
        "merger": "tsv_m",
        "device": "cuda",
    }
    registry = build_registry()
    spec = load_spec(config, registry=registry, base_dir=root)
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    executor = registry.create("executor", "processes", workers=2 * len(devices), devices=devices)
    MergePipeline(spec).run(tmp_path / "local")
    report = MergePipeline(spec, executor=executor).run(tmp_path / "pinned")
    used = {w["device"] for w in report["executor"]["workers"].values()}
    assert used == set(devices)
    a, b = load_output(tmp_path / "local"), load_output(tmp_path / "pinned")
    for key in a:  # same algorithm on other GPUs: equal to floating-point tolerance
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-3)
    assert json.loads((tmp_path / "pinned" / REPORT_FILE).read_text())["device"].startswith("cuda")
