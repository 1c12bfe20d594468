"""End-to-end merges on small generated checkpoints, checked against an in-memory
merge written independently in each test (float64 numpy-style arithmetic)."""

from __future__ import annotations

import json

import pytest
import torch

from pactframe.api import load_spec, merge, merge_state_dicts
from pactframe.pipeline import MergePipeline
from tests.integration._pipeline_helpers import (
    finetune,
    load_output,
    test_registry,
    tiny_model,
    write_models,
)

MIXED = {
    "layers.0.attn.q.weight": torch.float16,
    "layers.1.mlp.up.weight": torch.bfloat16,
    "layers.0.mlp.up.bias": torch.float16,
    "lm_head.weight": torch.bfloat16,
}


def _config(bp, paths, **over):
    data = {
        "base": str(bp),
        "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
        "preprocessors": [{"name": "t_scale", "factor": 2.0}],
        "merger": {"name": "t_sum", "scaling": 0.25},
        "fallback": "t_mean",
        "prefetch": 1,
    }
    data.update(over)
    return data


def _reference(base, fts, key, *, factor=2.0, scaling=0.25):
    """Independent: t_scale then t_sum for 2-D tensors, the mean for the rest, ints copied;
    computed in float64 from the float32-cast inputs, cast to the base dtype."""
    b = base[key]
    if not b.is_floating_point():
        return b
    b32 = b.float().double()
    tvs = [ft[key].float().double() - b32 for ft in fts]
    if b.ndim == 2:
        delta = scaling * sum(factor * t for t in tvs)
    else:
        delta = sum(tvs) / len(tvs)
    return (b32 + delta).to(b.dtype)


@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
def test_merge_equals_in_memory_reference(tmp_path, sharded):
    base, fts, bp, paths = write_models(tmp_path, tasks=3, sharded=sharded, dtypes=MIXED)
    report = merge(
        _config(bp, paths, output={"shard_size": 700}), tmp_path / "out", registry=test_registry()
    )
    out = load_output(tmp_path / "out")
    assert sorted(out) == sorted(base)
    for key in base:
        ref = _reference(base, fts, key)
        assert out[key].dtype == base[key].dtype, key
        tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(ref.dtype, 0)
        torch.testing.assert_close(out[key].double(), ref.double(), rtol=tol, atol=tol, msg=key)
    by_name = {t["name"]: t for t in report["tensors"]}
    assert by_name["layers.0.attn.q.weight"]["handler"] == "recipe"
    assert by_name["layers.0.norm.weight"]["handler"] == "fallback"
    assert "only 2-D" in by_name["layers.0.norm.weight"]["reason"]
    assert by_name["position_ids"]["handler"] == "copy"
    assert by_name["layers.0.attn.q.weight"]["records"][0] == {
        "source": "t_scale",
        "data": {"factor": 2.0},
    }
    if sharded:
        assert (tmp_path / "out" / "config.json").read_text() == '{"model_type": "tiny"}'
        assert (tmp_path / "out" / "model.safetensors.index.json").exists()


def test_report_and_model_card(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    merge(_config(bp, paths), tmp_path / "out", registry=test_registry())
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["seed"] == 0 and report["tasks"] == ["t0", "t1"]
    assert report["config"]["merger"] == {"name": "t_sum", "scaling": 0.25}
    assert report["versions"]["torch"] == torch.__version__
    assert report["summary"]["tensors"] == len(base)
    assert report["summary"]["handled_by"] == {"copy": 1, "fallback": 4, "recipe (default)": 6}
    assert report["memory"]["peak_rss_bytes"] > 0 and report["timings"]["total_s"] > 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "t_sum(scaling=0.25)" in card and "fallback: 4" in card


def test_rules_and_exclusions_are_applied_and_reported(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    cfg = _config(
        bp,
        paths,
        rules=[
            {"match": "lm_head", "merger": {"name": "t_sum", "scaling": 1.0}, "preprocessors": []},
            {"match": "^embed", "exclude": True},
        ],
    )
    report = merge(cfg, tmp_path / "out", registry=test_registry())
    out = load_output(tmp_path / "out")
    b = base["lm_head.weight"].double()
    ref = b + sum(ft["lm_head.weight"].double() - b for ft in fts)
    torch.testing.assert_close(out["lm_head.weight"].double(), ref, rtol=1e-6, atol=1e-6)
    e = base["embed.weight"].double()
    ref_e = e + sum(ft["embed.weight"].double() - e for ft in fts) / 2
    torch.testing.assert_close(out["embed.weight"].double(), ref_e, rtol=1e-6, atol=1e-6)
    by_name = {t["name"]: t for t in report["tensors"]}
    assert by_name["embed.weight"]["reason"] == "excluded by rule '^embed'"
    assert by_name["lm_head.weight"]["route"] == "rule 'lm_head'"


def test_shard_metadata_names_every_recipes_merger(tmp_path):
    from safetensors import safe_open

    _, _, bp, paths = write_models(tmp_path)
    rules = [{"match": "lm_head", "merger": "t_noise"}, {"match": "^embed", "exclude": True}]
    merge(
        _config(bp, paths, rules=rules, output={"shard_size": 700}),
        tmp_path / "out",
        registry=test_registry(),
    )
    shards = sorted((tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 1
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            meta = f.metadata()
        assert meta["pactframe_merger"] == "t_sum"  # the default recipe's, as before
        assert json.loads(meta["pactframe_recipes"]) == {
            "default": "t_sum",
            "rule 'lm_head'": "t_noise",
        }
        assert meta["pactframe_fallback"] == "t_mean"


def test_each_run_reports_its_own_timings(tmp_path):
    """Timings belong to the run (its report); the pipeline only shows the last run's,
    read-only."""
    _, _, bp, paths = write_models(tmp_path)
    pipe = MergePipeline(load_spec(_config(bp, paths), registry=test_registry()))
    assert dict(pipe.timings) == {}
    report = pipe.run(tmp_path / "out")
    phases = {"plan_s", "prepass_s", "compute_s", "main_pass_s", "total_s"}
    assert set(report["timings"]) == phases
    t = report["timings"]
    assert 0 <= t["plan_s"] <= t["total_s"] and 0 < t["main_pass_s"] <= t["total_s"]
    assert dict(pipe.timings).keys() == phases
    assert pipe.timings["total_s"] == pytest.approx(t["total_s"], abs=1e-4)
    with pytest.raises(TypeError):
        pipe.timings["total_s"] = 0.0  # type: ignore[index]
    second = pipe.run(tmp_path / "out2")
    assert pipe.timings["total_s"] == pytest.approx(second["timings"]["total_s"], abs=1e-4)
    assert report["timings"] == t  # the first run's report is not touched by the second


def test_merge_state_dicts_reports_its_timings():
    base = tiny_model(0)
    result = merge_state_dicts(
        base,
        [finetune(base, 1), finetune(base, 2)],
        {"merger": "t_sum", "fallback": "t_mean"},
        registry=test_registry(),
    )
    t = result.report["timings"]
    assert set(t) == {"plan_s", "prepass_s", "compute_s", "main_pass_s", "total_s"}
    assert 0 < t["main_pass_s"] <= t["total_s"]


def test_output_dtype_override(tmp_path):
    base, fts, bp, paths = write_models(tmp_path, dtypes=MIXED)
    merge(
        _config(bp, paths, output={"dtype": "bfloat16"}), tmp_path / "out", registry=test_registry()
    )
    out = load_output(tmp_path / "out")
    assert out["embed.weight"].dtype == torch.bfloat16
    assert out["position_ids"].dtype == torch.int64  # non-float tensors keep their dtype


def test_same_seed_gives_byte_identical_output(tmp_path):
    base, fts, bp, paths = write_models(tmp_path, sharded=True)
    reg = test_registry()
    cfg = _config(bp, paths, merger="t_noise", preprocessors=[], seed=7)
    merge(cfg, tmp_path / "o1", registry=reg)
    merge(cfg, tmp_path / "o2", registry=reg)
    merge(dict(cfg, seed=8), tmp_path / "o3", registry=reg)
    files = sorted(p.name for p in (tmp_path / "o1").glob("*.safetensors"))
    assert files
    for f in files:
        assert (tmp_path / "o1" / f).read_bytes() == (tmp_path / "o2" / f).read_bytes()
    assert any(
        (tmp_path / "o1" / f).read_bytes() != (tmp_path / "o3" / f).read_bytes() for f in files
    )


def test_result_does_not_depend_on_tensor_order(tmp_path):
    """Seeded randomized merger: files in header order vs state dicts in reversed order
    vs a different shard assignment give identical tensors."""
    base, fts, bp, paths = write_models(tmp_path, sharded=True)
    reg = test_registry()
    cfg = _config(bp, paths, merger="t_noise", preprocessors=[], seed=3)
    merge(cfg, tmp_path / "o1", registry=reg)
    from_files = load_output(tmp_path / "o1")
    rev = lambda sd: dict(reversed(list(sd.items())))  # noqa: E731
    in_memory = merge_state_dicts(
        rev(base),
        {"t0": rev(fts[0]), "t1": rev(fts[1])},
        {k: v for k, v in cfg.items() if k not in ("base", "models")},
        registry=reg,
    )
    assert list(in_memory) == list(rev(base))
    for key in base:
        assert torch.equal(from_files[key], in_memory[key]), key


def test_two_pass_preprocessor_gets_whole_model_state(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    reg = test_registry()
    merge(
        _config(
            bp, paths, preprocessors=["t_globalnorm"], merger={"name": "t_sum", "scaling": 1.0}
        ),
        tmp_path / "out",
        registry=reg,
    )
    out = load_output(tmp_path / "out")
    # independent: peak |Delta_t| over the 2-D tensors (the recipe's tensors only)
    keys2d = [k for k, v in base.items() if v.ndim == 2]
    peaks = [
        max(float((ft[k].float() - base[k].float()).abs().max()) for k in keys2d) for ft in fts
    ]
    for k in keys2d:
        b = base[k].double()
        ref = b + sum((ft[k].float().double() - b) / p for ft, p in zip(fts, peaks))
        torch.testing.assert_close(out[k].double(), ref, rtol=1e-5, atol=1e-6)


def test_merge_state_dicts_accepts_modules():
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)) for _ in range(3)]
    snapshot = [{k: v.clone() for k, v in n.state_dict().items()} for n in nets]
    out = merge_state_dicts(
        nets[0],
        {"a": nets[1], "b": nets[2]},
        {
            "merger": {"name": "t_sum", "scaling": 0.5},
            "fallback": "t_mean",
        },  # float32 compute: the pipeline must not subtract in place into the caller's tensors
        registry=test_registry(),
    )
    sds = [n.state_dict() for n in nets]
    assert all(torch.equal(sd[k], before[k]) for sd, before in zip(sds, snapshot) for k in sd)
    for key, b in sds[0].items():
        tvs = [sd[key].double() - b.double() for sd in sds[1:]]
        delta = 0.5 * sum(tvs) if b.ndim == 2 else sum(tvs) / 2
        torch.testing.assert_close(out[key].double(), (b.double() + delta).float().double())


def test_prefetch_zero_and_two_agree(tmp_path):
    base, fts, bp, paths = write_models(tmp_path, sharded=True)
    reg = test_registry()
    merge(_config(bp, paths, prefetch=0), tmp_path / "a", registry=reg)
    merge(_config(bp, paths, prefetch=3), tmp_path / "b", registry=reg)
    a, b = load_output(tmp_path / "a"), load_output(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pipeline_plan_describes_every_tensor(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    from pactframe.config import parse_config

    spec = parse_config(_config(bp, paths), registry=test_registry())
    plan = MergePipeline(spec).plan()
    text = plan.describe()
    assert all(k in text for k in base)
    assert "fallback: t_sum does not take it: only 2-D tensors" in text
    est = plan.memory_estimate()["working_set_bytes"]
    largest = max(v.numel() for v in base.values()) * 4
    assert est >= (2 + 3) * largest  # (T + 3) compute copies at least


def test_real_builtins_task_arithmetic_and_average(tmp_path, registry):
    base, fts, bp, paths = write_models(tmp_path, tasks=3, dtypes=MIXED)
    merge(
        {
            "base": str(bp),
            "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
            "merger": {"name": "task_arithmetic", "scaling": 0.3},
        },
        tmp_path / "out",
        registry=registry,
    )
    out = load_output(tmp_path / "out")
    for key, b in base.items():
        if not b.is_floating_point():
            assert torch.equal(out[key], b)
            continue
        b64 = b.double()
        ref = (b64 + 0.3 * sum(ft[key].double() - b64 for ft in fts)).to(b.dtype)
        tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[b.dtype]
        torch.testing.assert_close(out[key].double(), ref.double(), rtol=tol, atol=tol, msg=key)


def test_real_pact_tsv_m_with_intrusion_energy(tmp_path, registry):
    base = tiny_model(0, width=16)
    fts = [finetune(base, t + 1) for t in range(2)]
    from tests.integration._pipeline_helpers import save_single

    bp = save_single(base, tmp_path / "b.safetensors")
    paths = [save_single(ft, tmp_path / f"f{i}.safetensors") for i, ft in enumerate(fts)]
    report = merge(
        {
            "base": str(bp),
            "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
            "preprocessors": [{"name": "pact", "decomposer": "randomized_svd"}],
            "merger": "tsv_m",
            "evaluators": ["intrusion_energy"],
        },
        tmp_path / "out",
        registry=registry,
    )
    q = next(t for t in report["tensors"] if t["name"] == "layers.0.attn.q.weight")
    ie = q["evaluators"]["intrusion_energy"]
    assert set(ie["before"]) == {"t0", "t1"} and all(0 <= v <= 1 for v in ie["before"].values())
    assert [r["source"] for r in q["records"]] == ["pact", "tsv_m"]
    out = load_output(tmp_path / "out")
    # the pipeline feeds the components the bundle built here by hand (float32 task
    # vectors, the seed derived from the run seed and the name) and adds the delta
    from pactframe import LayerBundle
    from pactframe.seeding import derive_seed

    key = "layers.0.attn.q.weight"
    pact = registry.create("preprocessor", "pact", decomposer="randomized_svd")
    tsvm = registry.create("merger", "tsv_m")
    bundle = LayerBundle(
        key, base[key], [ft[key] - base[key] for ft in fts], ["t0", "t1"], seed=derive_seed(0, key)
    )
    expected = base[key] + tsvm.merge(pact.preprocess(bundle)).delta
    torch.testing.assert_close(out[key], expected, rtol=1e-5, atol=1e-6)


def test_pipeline_from_yaml_path(tmp_path):
    import yaml

    base, fts, bp, paths = write_models(tmp_path)
    cfg = _config(bp.name, [p.name for p in paths])  # relative to the YAML's folder
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(cfg))
    pipe = MergePipeline.from_config(tmp_path / "merge.yaml", registry=test_registry())
    assert pipe.spec.base == bp and len(pipe.plan().tensors) == len(base)


def test_merge_state_dicts_keeps_the_merged_deltas_when_asked():
    base = tiny_model(0)
    models = [finetune(base, 1), finetune(base, 2)]
    config = {"merger": "t_sum", "fallback": "t_mean"}
    plain = merge_state_dicts(base, models, config, registry=test_registry())
    kept = merge_state_dicts(base, models, config, registry=test_registry(), keep_merged=True)
    assert plain.merged == {} and sorted(kept.merged) == sorted(base)
    assert kept.merged["position_ids"] is None  # copied from the base
    for key in ("layers.0.attn.q.weight", "layers.0.norm.weight"):
        delta = kept.merged[key].delta
        torch.testing.assert_close(kept[key], base[key] + delta.to(base[key].dtype))
        assert torch.equal(kept[key], plain[key])
