"""Executors write the same bytes: local, processes with 1, 2 and 3 workers and ray with 2
workers, on one config that exercises every kind of work unit.

The config (on the generated Llama-shaped example with covariances) has randomness
(DARE drops, randomized SVD in PACT), chained two-pass components (PAVE's rank
allocation feeding TIES's global trim), a task-conditioned two-pass merger (EMR,
whose modulators file must not depend on arrival order), a rule, a fallback and an
evaluator. Every executor gets one torch thread per worker: the bytes of a merge
depend on the intra-op thread count (docs/executors.md), not on the executor.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from pactframe.api import load_spec
from pactframe.example import TASKS, write_example
from pactframe.pipeline import REPORT_FILE, MergePipeline
from pactframe.registry import build_registry

CONFIG = {
    "base": "./base",
    "models": [
        {"name": t, "path": f"./ft-{t}", "covariance": f"./cov-{t}.safetensors"} for t in TASKS
    ],
    "preprocessors": [
        {"name": "dare", "drop_probability": 0.3},
        {"name": "pact", "decomposer": "randomized_svd", "core_rank": 8, "task_rank": 4},
    ],
    "merger": {"name": "tsv_m"},
    "rules": [
        {
            "match": r"mlp\.down_proj",
            "preprocessors": [{"name": "pave", "rho": 0.875}],
            "merger": {"name": "ties", "trim_scope": "global", "keep_fraction": 0.3},
        },
        {"match": r"self_attn\.o_proj", "preprocessors": [], "merger": "emr"},
        {
            "match": "embed_tokens|lm_head",
            "preprocessors": [],
            "merger": {"name": "task_arithmetic", "scaling": 0.3},
        },
    ],
    "fallback": "average",
    "evaluators": ["intrusion_energy"],
    "seed": 3,
    "output": {"shard_size": "100KB"},
}

EXECUTORS = {
    "local": {"name": "local", "threads": 1},
    "processes-1": {"name": "processes", "workers": 1, "threads": 1},
    "processes-2": {"name": "processes", "workers": 2, "threads": 1},
    "processes-3": {"name": "processes", "workers": 3, "threads": 1},
    "ray-2": {"name": "ray", "workers": 2, "threads": 1},
}
#: report fields that measure the run (time, memory) or name the executor
VOLATILE = ("created", "timings", "memory", "executor")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return write_example(tmp_path_factory.mktemp("executors") / "example").parent


@pytest.fixture(scope="module")
def merged(example, tmp_path_factory):
    """``merged(key) -> output folder``: each executor's merge, run once per module."""
    registry = build_registry()
    spec = load_spec(CONFIG, registry=registry, base_dir=example)
    outs: dict[str, Path] = {}

    def run(key: str) -> Path:
        if key not in outs:
            executor = registry.build("executor", EXECUTORS[key])
            out = tmp_path_factory.mktemp("out") / key
            MergePipeline(spec, executor=executor).run(out)
            outs[key] = out
        return outs[key]

    return run


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file but the report and the model card (they hold timings)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.name not in (REPORT_FILE, "README.md")
    }


def _stable(report: dict) -> dict:
    out = copy.deepcopy(report)
    for key in VOLATILE:
        out.pop(key)
    for entry in out["tensors"]:
        entry.pop("seconds", None)
    return out


def test_the_local_run_exercises_randomness_two_pass_chains_and_modulators(merged):
    out = merged("local")
    report = json.loads((out / REPORT_FILE).read_text())
    assert (out / "task_modulators.safetensors").is_file()
    assert len([p for p in out.glob("model-*.safetensors")]) > 1
    sources = {r["source"] for e in report["tensors"] for r in e.get("records", [])}
    assert {"dare", "pact", "pave", "ties", "emr"} <= sources
    records = [r for e in report["tensors"] for r in e.get("records", [])]
    pave = [r["data"] for r in records if r["source"] == "pave"]
    assert pave and all(d.get("scope") == "model" for d in pave if d["action"] == "purified")
    ties = [r["data"] for r in records if r["source"] == "ties"]
    assert ties and all(d["trim_scope"] == "global" for d in ties)
    assert report["executor"]["name"] == "local"
    assert list(report["executor"]["workers"]) and report["executor"]["parallelism"] == 1


@pytest.mark.parametrize("key", ["processes-1", "processes-2", "processes-3", "ray-2"])
def test_every_executor_writes_the_bytes_of_the_local_run(key, merged, request):
    if key.startswith("ray"):
        request.getfixturevalue("ray_cluster")
    local, other = merged("local"), merged(key)
    assert _digests(other) == _digests(local)
    a = json.loads((local / REPORT_FILE).read_text())
    b = json.loads((other / REPORT_FILE).read_text())
    # the report differs only in timing, memory and executor fields
    assert _stable(b) == _stable(a)
    assert set(a) == set(b)
    ex = b["executor"]
    assert ex["name"] == EXECUTORS[key]["name"]
    assert ex["config"]["workers"] == EXECUTORS[key]["workers"]
    assert ex["config"]["threads"] == 1
    workers = ex["workers"]
    assert sum(w["tensors"] for w in workers.values()) == len(b["tensors"])
    if key.startswith("processes"):
        # every worker took units, each reports its own peak memory
        assert len(workers) == EXECUTORS[key]["workers"]
        assert all(w["peak_rss_bytes"] > 0 for w in workers.values())
        # the prepass runs (2 tensors per two-pass stage here) were spread over workers
        assert sum(w["prepass_s"] > 0 for w in workers.values()) == min(2, len(workers))
