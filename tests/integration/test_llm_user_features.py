"""What an LLM user coming from mergekit meets: per-model weights (and their refusal),
mixed input dtypes (one message, or ``input_dtype: cast``), the Hub-ready model card
and ``pactframe_config.yaml``, and ``merge_state_dicts``' result object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from pactframe.api import MergeResult, merge, merge_state_dicts
from pactframe.config import ConfigProblems, parse_config
from pactframe.modulators import materialize
from pactframe.pipeline import MergePipeline


def sd(seed: int, dtype=torch.float32, base=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    if base is not None:
        return {
            k: (v.float() + 0.1 * torch.randn(v.shape, generator=g)).to(dtype)
            for k, v in base.items()
        }
    return {
        f"model.layers.{i}.mlp.weight": torch.randn(5, 4, generator=g).to(dtype) for i in range(3)
    } | {"model.norm.weight": torch.randn(4, generator=g).to(dtype)}


def write(folder: Path, state: dict, hub: str | None = None) -> str:
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    config = {"model_type": "llama"}
    if hub:
        config["_name_or_path"] = hub
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture()
def models(tmp_path):
    base = sd(0)
    paths = {
        "base": write(tmp_path / "base", base, hub="org/base-7b"),
        "a": write(tmp_path / "a", sd(1, base=base), hub="org/a-7b"),
        "b": write(tmp_path / "b", sd(2, base=base)),
    }
    return tmp_path, paths


def config(paths, merger, weights=(None, None)):
    models = []
    for name, w in zip(("a", "b"), weights):
        entry = {"name": name, "path": paths[name]}
        if w is not None:
            entry["weight"] = w
        models.append(entry)
    return {"base": paths["base"], "models": models, "merger": merger}


@pytest.mark.parametrize("merger", ["tsv_m", "iso_c", "emr", "slerp"])
def test_weights_are_refused_by_mergers_without_a_notion_of_weight(models, merger):
    _, paths = models
    cfg = config(paths, merger, weights=(0.7, 0.3))
    if merger == "slerp":
        cfg["models"] = cfg["models"][:1]
    with pytest.raises(ConfigProblems, match=f"no notion of per-model weight: merger: {merger}"):
        parse_config(cfg)


def test_weights_reach_the_merger_through_the_pipeline(models, tmp_path):
    _, paths = models
    merge(config(paths, {"name": "task_arithmetic", "scaling": 1.0}, (0.25, 2.0)), tmp_path / "o")
    out = load_file(str(tmp_path / "o" / "model.safetensors"))
    base, a, b = (load_file(str(Path(paths[n]) / "model.safetensors")) for n in ("base", "a", "b"))
    for k, v in out.items():
        ref = base[k].double() + 0.25 * (a[k].double() - base[k]) + 2.0 * (b[k].double() - base[k])
        torch.testing.assert_close(v.double(), ref, rtol=1e-6, atol=1e-6)


def test_a_bad_weight_is_a_config_problem(models):
    _, paths = models
    with pytest.raises(ConfigProblems, match="weight: must be a finite number"):
        parse_config(config(paths, "average", ("heavy", None)))


def test_mixed_dtypes_are_one_message_listing_dtypes_per_model(tmp_path):
    base = sd(0)
    paths = {
        "base": write(tmp_path / "base", base),
        "a": write(tmp_path / "a", sd(1, torch.bfloat16, base=base)),
        "b": write(tmp_path / "b", sd(2, base=base)),
    }
    with pytest.raises(ConfigProblems) as err:
        MergePipeline(parse_config(config(paths, "average"))).plan()
    assert len(err.value.problems) == 1
    text = err.value.problems[0]
    assert "model 'a': 4 tensor(s) BF16 where the base has F32" in text
    assert "input_dtype: cast" in text
    cfg = config(paths, "average") | {"input_dtype": "cast"}
    report = merge(cfg, tmp_path / "out")
    assert [n for n in report["notes"] if "cast to the compute dtype" in n]
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    a = load_file(str(Path(paths["a"]) / "model.safetensors"))
    for k, v in out.items():
        assert v.dtype == torch.float32
        ref = (a[k].double() + sd(2, base=base)[k].double()) / 2
        torch.testing.assert_close(v.double(), ref, rtol=1e-6, atol=1e-6)


def test_model_card_has_hub_metadata_recipe_and_config_file(models, tmp_path):
    _, paths = models
    cfg = config(paths, {"name": "ties", "keep_fraction": 0.5}, (1.0, 0.5))
    merge(cfg, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == ["org/base-7b", "org/a-7b", paths["b"]]
    assert meta["tags"] == ["merge", "pactframe", "ties"]
    assert meta["library_name"] == "transformers"
    assert "```yaml" in card and "keep_fraction: 0.5" in card
    assert "## Result" in card
    written = yaml.safe_load((tmp_path / "out" / "pactframe_config.yaml").read_text())
    again = parse_config(written)
    assert again.recipe.merger.to_config() == parse_config(cfg).recipe.merger.to_config()
    assert [m.weight for m in again.models] == [1.0, 0.5]


def test_merge_state_dicts_returns_state_report_and_task_states(models, tmp_path):
    root, paths = models
    states = {n: load_file(str(Path(p) / "model.safetensors")) for n, p in paths.items()}
    result = merge_state_dicts(
        states["base"], {"a": states["a"], "b": states["b"]}, {"merger": "emr"}
    )
    assert isinstance(result, MergeResult) and result.is_task_conditioned
    assert set(result.state_dict) == set(states["base"])
    assert result.report["summary"]["tensors"] == len(states["base"])
    assert result.report["config"]["merger"]["name"] == "emr"
    # the same as the file merge followed by `pactframe materialize`
    merge(
        {
            "base": paths["base"],
            "models": [{"name": "a", "path": paths["a"]}, {"name": "b", "path": paths["b"]}],
            "merger": "emr",
        },
        tmp_path / "m",
    )
    materialize(tmp_path / "m", "b", tmp_path / "b_only")
    from_files = load_file(str(tmp_path / "b_only" / "model.safetensors"))
    mine = result.task_state_dict("b")
    for k in from_files:
        torch.testing.assert_close(mine[k], from_files[k], rtol=0, atol=1e-6)
    assert not torch.equal(mine["model.layers.0.mlp.weight"], result["model.layers.0.mlp.weight"])
    plain = merge_state_dicts(states["base"], [states["a"]], {"merger": "average"})
    assert not plain.is_task_conditioned
    assert all(torch.equal(plain.task_state_dict("task0")[k], plain[k]) for k in plain)


def test_pact_task_arithmetic_takes_weights_like_its_backbone(models):
    """A PACT preset accepts weights iff its backbone does; with T = 1 (PACT passes the
    tensor through) pact_task_arithmetic equals task_arithmetic with the same weight."""
    from pactframe.registry import build_registry

    reg = build_registry()
    assert reg.entry("merger", "pact_task_arithmetic").cls.accepts_weights
    assert not reg.entry("merger", "pact_tsv_m").cls.accepts_weights
    _, paths = models
    one = {"base": paths["base"], "models": [{"name": "a", "path": paths["a"], "weight": 0.4}]}
    states = {n: load_file(str(Path(p) / "model.safetensors")) for n, p in paths.items()}
    got = merge_state_dicts(
        states["base"],
        {"a": states["a"]},
        parse_config(one | {"merger": {"name": "pact_task_arithmetic", "scaling": 1.0}}),
    )
    want = merge_state_dicts(
        states["base"],
        {"a": states["a"]},
        parse_config(one | {"merger": {"name": "task_arithmetic", "scaling": 1.0}}),
    )
    for k in want:
        torch.testing.assert_close(got[k], want[k])
        ref = states["base"][k] + 0.4 * (states["a"][k] - states["base"][k])
        torch.testing.assert_close(want[k], ref, rtol=1e-6, atol=1e-6)
