"""benchmarks/executors.py runs end to end on a tiny model (``--smoke``): every executor
writes the local run's bytes, the table and results.json hold the measured fields."""

from __future__ import annotations

import json

import pytest

from tests._scripts import load_script


def _load():
    return load_script("benchmarks/executors.py", "bench_executors")


def test_smoke_run_of_the_local_executor(tmp_path, capsys):
    bench = _load()
    code = bench.main(["--smoke", "--executors", "local", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in results["results"]] == ["local"]
    assert results["projection_7b"]["tensors"] == 32 * 7 + 2
    assert "| local |" in out


@pytest.mark.slow
def test_smoke_run_of_the_executors_benchmark(tmp_path, capsys):
    bench = _load()
    code = bench.main(["--smoke", "--executors", "local", "processes x2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out  # 0 only when every executor wrote the local run's bytes
    results = json.loads((tmp_path / "results.json").read_text())
    labels = [r["label"] for r in results["results"]]
    assert labels == ["local", "processes x2"]
    procs = results["results"][1]
    assert len(procs["worker_peak_rss_bytes"]) == 2
    assert sum(procs["tensors_per_worker"].values()) == len(bench.llama_shapes(64, 2, 256))
    assert all(r["wall_s"] > 0 and r["driver_peak_rss_bytes"] > 0 for r in results["results"])
    proj = results["projection_7b"]
    assert proj["tensors"] == 32 * 7 + 2
    w = proj["workers"]
    assert w["1"] >= w["8"] >= w["64"] >= proj["longest_tensor_s"]
    assert "| processes x2 |" in out and "Projection (not a measurement)" in out


def test_projection_scales_by_the_svd_cost_of_each_kind():
    bench = _load()
    local = {
        "tensors": [
            {"name": "model.layers.0.self_attn.q_proj.weight", "shape": [64, 64], "seconds": 1.0},
            {"name": "model.layers.0.mlp.up_proj.weight", "shape": [176, 64], "seconds": 2.0},
            {"name": "model.layers.0.mlp.down_proj.weight", "shape": [64, 176], "seconds": 3.0},
            {"name": "model.embed_tokens.weight", "shape": [256, 64], "seconds": 0.5},
            {"name": "lm_head.weight", "shape": [256, 64], "seconds": 0.25},
        ]
    }
    proj = bench.projection(local, 64, 256)
    attn = proj["kinds"]["attn (h x h)"]
    assert attn["scale"] == (4096 / 64) ** 3 and attn["projected_s"] == attn["scale"]
    up = proj["kinds"]["mlp up/gate (f x h)"]
    assert up["scale"] == (11008 * 4096 * 4096) / (176 * 64 * 64)
    emb = 0.5 * (32000 * 4096) / (256 * 64)
    total = 32 * (4 * attn["projected_s"] + 2 * up["projected_s"])
    total += 32 * proj["kinds"]["mlp down (h x f)"]["projected_s"] + 2 * emb
    assert abs(proj["workers"]["1"] - total) < 1e-6 * total
    assert abs(proj["workers"]["8"] - total / 8) < 1e-6 * total
