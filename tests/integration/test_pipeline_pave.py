"""PAVE through the pipeline: covariance files are loaded per tensor, the two-pass
rank allocation runs as a prepass, and the report carries PAVE's allocations."""

from __future__ import annotations

import pytest
import torch

from pactframe.api import merge
from pactframe.covariance_io import save_covariances
from tests.integration._pipeline_helpers import load_output, write_models


def _covs(base, seed):
    g = torch.Generator().manual_seed(seed)
    covs = {}
    for key, w in base.items():
        if w.ndim == 2 and w.is_floating_point() and "embed" not in key:
            x = torch.randn(64, w.shape[1], generator=g, dtype=torch.float64)
            covs[key] = (x.T @ x / 64).float()
    return covs, dict.fromkeys(covs, "linear"), dict.fromkeys(covs, 64)


def test_pave_two_pass_with_covariance_files(tmp_path, registry):
    base, fts, bp, paths = write_models(tmp_path, tasks=2, layers=1)
    models = []
    for i, p in enumerate(paths):
        cov = tmp_path / f"cov{i}.safetensors"
        save_covariances(cov, *_covs(base, i))
        models.append({"name": f"t{i}", "path": str(p), "covariance": str(cov)})
    report = merge(
        {
            "base": str(bp),
            "models": models,
            "preprocessors": ["pave"],
            "merger": {"name": "task_arithmetic", "scaling": 1.0},
        },
        tmp_path / "out",
        registry=registry,
    )
    by_name = {t["name"]: t for t in report["tensors"]}
    q = by_name["layers.0.attn.q.weight"]["records"][0]
    assert q["source"] == "pave" and q["data"]["action"] == "purified"
    assert set(q["data"]["tasks"]) == {"t0", "t1"}
    # the per-model ratios rho_i come from the whole-model allocation (the prepass)
    assert all(0 < q["data"]["tasks"][t]["rho_i"] <= 1 for t in ("t0", "t1"))
    # the embedding has no covariance: PAVE keeps its plain task vectors
    emb = by_name["embed.weight"]["records"][0]["data"]
    assert emb["action"] != "purified"
    out = load_output(tmp_path / "out")
    e = base["embed.weight"].double()
    ref = e + sum(ft["embed.weight"].double() - e for ft in fts)
    torch.testing.assert_close(out["embed.weight"].double(), ref, rtol=1e-6, atol=1e-6)
    assert all(torch.isfinite(v.double()).all() for v in out.values())


@pytest.mark.slow
def test_pave_on_the_generated_example(tmp_path):
    from pactframe.cli import main

    assert main(["example", str(tmp_path / "ex")]) == 0
    cfg = tmp_path / "ex" / "config.yaml"
    cfg.write_text(
        cfg.read_text().replace("{name: pact, decomposer: randomized_svd}", "{name: pave}")
    )
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--quiet"]) == 0
