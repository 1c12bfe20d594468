"""benchmarks/scale.py (issue 13): the smoke mode runs end to end, and the configs it
builds select the exact and efficient variants it claims to."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pactframe import build_registry
from pactframe.config import parse_config
from tests._scripts import load_script


def _scale():
    return load_script("benchmarks/scale.py", "pf_scale_benchmark")


def test_efficient_configs_reach_the_backbone_and_pave_precision(tmp_path):
    """Efficient PACT-TSVM: randomized_svd in PACT and TSV-M (Gram route); Iso-C efficient
    takes the Gram route; PAVE's efficient variant is the default Gram route, its exact one
    the float64 SVD route; each task has its own covariance file, shared within a task by
    the weights that read one input (q/k/v, gate/up) and different across tasks."""
    scale = _scale()
    scale.make_checkpoints(tmp_path, hidden=64, layers=1, tasks=2, vocab=128)
    registry = build_registry()

    def merger(method: str, variant: str):
        data = scale.method_config(method, variant, tmp_path, 2, "cpu")
        return parse_config(data, registry=registry).recipe

    recipe = merger("pact_tsv_m", "efficient")
    assert recipe.merger.aligner.decomposer.name == "randomized_svd"
    assert recipe.merger.merger.decomposer.name == "randomized_svd"
    assert merger("pact_tsv_m", "exact").merger.merger.decomposer.name == "exact_svd"
    assert merger("iso_c", "efficient").merger.route == "gram"
    assert merger("pave_ta", "efficient").preprocessors[0].uses_gram
    exact = merger("pave_ta", "exact").preprocessors[0]
    assert not exact.uses_gram and exact.precision == "float64"

    covs = [load_file(str(tmp_path / f"cov{t}.safetensors")) for t in range(2)]
    layer = "model.layers.0."
    for t in range(2):
        q, k, v = (covs[t][f"{layer}self_attn.{p}_proj.weight"] for p in "qkv")
        assert torch.equal(q, k) and torch.equal(q, v)
        gate, up = (covs[t][f"{layer}mlp.{p}_proj.weight"] for p in ("gate", "up"))
        assert torch.equal(gate, up) and not torch.equal(
            q, covs[t][f"{layer}self_attn.o_proj.weight"]
        )
    assert not torch.equal(
        covs[0][f"{layer}mlp.down_proj.weight"], covs[1][f"{layer}mlp.down_proj.weight"]
    )
    assert scale.intermediate_size(4096) == 11008


@pytest.mark.slow
def test_smoke_mode_writes_ratios_to_ta(tmp_path):
    out = tmp_path / "scale.json"
    args = ["--smoke", "--methods", "ta", "pact_iso_c", "--variants", "efficient"]
    assert _scale().main([*args, "--work", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["method"], r["variant"]) for r in rows] == [
        ("ta", "exact"),
        ("pact_iso_c", "efficient"),
    ]
    assert rows[0]["time_x_ta"] == 1.0 and rows[1]["time_x_ta"] > 0
    assert all(r["peak_rss_mib"] > 0 for r in rows)


def test_extrapolation_from_saved_runs(tmp_path, capsys):
    """--extrapolate reads earlier --json files: per-layer 1 s at hidden 1024 and 4 s at
    2048 grow 4x per doubling, so 4 * 4 s * 32 layers = 512 s at the 7B shape."""
    rows = [
        {
            "method": "ta",
            "variant": "exact",
            "tasks": 3,
            "hidden": 1024,
            "layers": 8,
            "wall_s": 8.0,
        },
        {
            "method": "ta",
            "variant": "exact",
            "tasks": 3,
            "hidden": 2048,
            "layers": 2,
            "wall_s": 8.0,
        },
        {
            "method": "ties",
            "variant": "exact",
            "tasks": 3,
            "hidden": 1024,
            "layers": 8,
            "wall_s": 1.0,
        },
    ]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"results": rows[::2]}))
    second.write_text(json.dumps({"results": rows[1:2]}))
    assert _scale().main(["--extrapolate", str(first), str(second)]) == 0
    out = capsys.readouterr().out
    assert f"- ta/exact/T=3: ~{512 / 60:.1f} min" in out
    assert "ties" not in out  # measured at one width only
