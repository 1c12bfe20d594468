"""mergekit configs as they are (written from mergekit's documented examples, with
local folders): conversion, refusals by name, and round trips
mergekit config -> pactframe merge -> the same tensors as the equivalent pactframe
config, and (linear, task_arithmetic, slerp) as a numpy computation of mergekit's
documented formula."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from pactframe.api import merge
from pactframe.config import ConfigProblems, load_config, parse_config
from pactframe.mergekit_compat import convert_mergekit

LAYERS = 3


def llama_like(seed: int, base: dict | None = None, scale: float = 0.1) -> dict:
    g = torch.Generator().manual_seed(seed)
    if base is not None:
        return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()}
    sd = {"model.embed_tokens.weight": torch.randn(11, 6, generator=g)}
    for i in range(LAYERS):
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(6, 6, generator=g)
        sd[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(8, 6, generator=g)
        sd[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(6, generator=g)
    sd["model.norm.weight"] = torch.randn(6, generator=g)
    sd["lm_head.weight"] = torch.randn(11, 6, generator=g)
    return sd


def write(folder: Path, sd: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "num_hidden_layers": LAYERS, "vocab_size": 11})
    )
    return folder


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    base = llama_like(0)
    sds = {"base": base, "math": llama_like(1, base), "code": llama_like(2, base)}
    for name, sd in sds.items():
        write(root / name, sd)
    return root, sds


def mk(root: Path, text: str) -> Path:
    path = root / "mergekit.yml"
    path.write_text(text)
    return path


def out_of(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


# ------------------------------------------------------------------ conversions
def test_linear_example_converts_and_matches_the_weighted_average(zoo, tmp_path):
    root, sds = zoo
    cfg = mk(
        root,
        """
models:
  - model: ./math
    parameters: {weight: 1.0}
  - model: ./code
    parameters: {weight: 0.3}
merge_method: linear
dtype: float32
""",
    )
    spec = load_config(cfg)
    assert spec.recipe.merger.name == "linear" and spec.base.name == "math"
    assert [m.weight for m in spec.models] == [1.0, 0.3]
    merge(cfg, tmp_path / "out")
    out = out_of(tmp_path / "out")
    for k, v in out.items():
        ref = (1.0 * sds["math"][k].double() + 0.3 * sds["code"][k].double()) / 1.3
        np.testing.assert_allclose(v.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_task_arithmetic_matches_mergekits_formula_and_the_pactframe_config(zoo, tmp_path):
    root, sds = zoo
    cfg = mk(
        root,
        """
merge_method: task_arithmetic
base_model: ./base
models:
  - model: ./base
  - model: ./math
    parameters: {weight: 0.7}
  - model: ./code
    parameters: {weight: 0.4}
parameters: {lambda: 0.9}
dtype: float32
""",
    )
    merge(cfg, tmp_path / "mk")
    native = {
        "base": str(root / "base"),
        "models": [
            {"name": "math", "path": str(root / "math"), "weight": 0.7},
            {"name": "code", "path": str(root / "code"), "weight": 0.4},
        ],
        "merger": {"name": "task_arithmetic", "scaling": 0.9},
    }
    merge(native, tmp_path / "native")
    a, b = out_of(tmp_path / "mk"), out_of(tmp_path / "native")
    for k in a:
        assert torch.equal(a[k], b[k]), k
        base = sds["base"][k].double()
        ref = base + 0.9 * (
            0.7 * (sds["math"][k].double() - base) + 0.4 * (sds["code"][k].double() - base)
        )
        np.testing.assert_allclose(a[k].double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_ties_example_maps_density_normalize_and_notes_int8_mask(zoo, tmp_path):
    root, _ = zoo
    cfg = mk(
        root,
        """
models:
  - model: ./base
  - model: ./math
    parameters: {density: 0.5, weight: 0.5}
  - model: ./code
    parameters: {density: 0.5, weight: 0.3}
merge_method: ties
base_model: ./base
parameters: {normalize: true, int8_mask: true}
dtype: bfloat16
""",
    )
    spec = load_config(cfg)
    assert spec.recipe.merger.to_config() == {
        "name": "ties",
        "scaling": 1.0,
        "keep_fraction": 0.5,
        "disjoint": "mean",
        "trim_scope": "tensor",
    }
    assert spec.output.dtype == "bfloat16" and spec.input_dtype == "cast"
    assert any("int8_mask" in n for n in spec.notes)
    report = merge(cfg, tmp_path / "out")
    assert any("int8_mask" in n for n in report["notes"])
    assert all(v.dtype == torch.bfloat16 for v in out_of(tmp_path / "out").values())
    native = {
        "base": str(root / "base"),
        "models": [
            {"name": "math", "path": str(root / "math"), "weight": 0.5},
            {"name": "code", "path": str(root / "code"), "weight": 0.3},
        ],
        "merger": {"name": "ties", "keep_fraction": 0.5},
        "output": {"dtype": "bfloat16"},
    }
    merge(native, tmp_path / "native")
    a, b = out_of(tmp_path / "out"), out_of(tmp_path / "native")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("method", "merger", "disjoint"),
    [("dare_ties", "ties", "sum"), ("dare_linear", "task_arithmetic", None)],
)
def test_dare_methods_become_dare_then_a_merger(zoo, tmp_path, method, merger, disjoint):
    root, _ = zoo
    cfg = mk(
        root,
        f"""
models:
  - model: ./math
    parameters: {{weight: 0.5, density: 0.53}}
  - model: ./code
    parameters: {{weight: 0.5, density: 0.53}}
merge_method: {method}
base_model: ./base
""",
    )
    spec = load_config(cfg)
    dare = spec.recipe.preprocessors[0]
    assert dare.name == "dare" and dare.drop_probability == pytest.approx(0.47)
    assert dare.rescale is True
    assert spec.recipe.merger.name == merger
    if disjoint:
        assert spec.recipe.merger.keep_fraction == 1.0
        assert spec.recipe.merger.disjoint == disjoint  # mergekit's dare_ties: normalize false
    else:
        assert spec.recipe.merger.normalize is False
    merge(cfg, tmp_path / "out")  # runs end to end


def test_slerp_example_with_gradients_matches_a_numpy_slerp(zoo, tmp_path):
    root, sds = zoo
    cfg = mk(
        root,
        f"""
slices:
  - sources:
      - model: ./base
        layer_range: [0, {LAYERS}]
      - model: ./math
        layer_range: [0, {LAYERS}]
merge_method: slerp
base_model: ./base
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
    )
    spec = load_config(cfg)
    assert spec.recipe.merger.num_layers == LAYERS  # read from the base's config.json
    merge(cfg, tmp_path / "out")
    out = out_of(tmp_path / "out")

    def t_of(name):  # mergekit's evaluation, by hand: layer i of 3 at i/2
        grads = {"self_attn": [0, 0.5, 0.3, 0.7, 1], "mlp": [1, 0.5, 0.7, 0.3, 0]}
        for flt, g in grads.items():
            if flt in name:
                i = int(name.split(".")[2])
                return float(np.interp(i / (LAYERS - 1), np.linspace(0, 1, len(g)), g))
        return 0.5

    for k, v in out.items():
        a, b = sds["base"][k].double().numpy(), sds["math"][k].double().numpy()
        t = t_of(k)
        dot = np.dot(a.ravel() / np.linalg.norm(a), b.ravel() / np.linalg.norm(b))
        if abs(dot) > 0.9995:
            ref = (1 - t) * a + t * b
        else:
            om = np.arccos(dot)
            ref = (np.sin((1 - t) * om) * a + np.sin(t * om) * b) / np.sin(om)
        np.testing.assert_allclose(v.double().numpy(), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "merge_method: passthrough\n"
            "slices: [{sources: [{model: ./base, layer_range: [0, 2]}]}]",
            "passthrough",
        ),
        ("merge_method: model_stock\nbase_model: ./base\nmodels: [{model: ./math}]", "model_stock"),
        (
            "merge_method: ties\nbase_model: ./base\nmodels:\n  - {model: ./math, parameters: "
            "{density: 0.5, weight: 1}}\n"
            "  - {model: ./code, parameters: {density: 0.7, weight: 1}}",
            "different densities",
        ),
        (
            "merge_method: slerp\nbase_model: ./base\nslices: [{sources: [{model: ./base, "
            "layer_range: [0, 2]}, {model: ./math, layer_range: [0, 2]}]}]\nparameters: {t: 0.5}",
            "not the whole model",
        ),
        (
            "merge_method: linear\nmodels:\n  - {model: ./math, parameters: {weight: "
            "[{filter: mlp, value: 0.5}, {value: 1}]}}",
            "per-tensor list",
        ),
        (
            "merge_method: ties\nbase_model: ./base\nmodels: [{model: some-org/some-model}]",
            "huggingface-cli download some-org/some-model",
        ),
        (
            "merge_method: linear\nmodels: [{model: ./math}]\ntokenizer_source: ./code",
            "tokenizer_source",
        ),
        (
            "merge_method: task_arithmetic\nbase_model: ./base\nmodels: [{model: ./math}]\n"
            "parameters: {epsilon: 0.1}",
            "no parameter 'epsilon'",
        ),
        (
            "merge_method: slerp\nbase_model: ./base\nmodels: [{model: ./math}, {model: ./code}]\n"
            "parameters: {t: 0.5}",
            "exactly one other model",
        ),
    ],
)
def test_unsupported_mergekit_configs_are_refused_by_name(zoo, text, said):
    root, _ = zoo
    with pytest.raises(ConfigProblems, match=said.replace("(", r"\(")):
        load_config(mk(root, text))


def test_convert_cli_prints_a_pactframe_config_that_parses(zoo):
    root, _ = zoo
    cfg = mk(
        root,
        "merge_method: ties\nbase_model: ./base\nmodels:\n"
        "  - {model: ./math, parameters: {density: 0.4, weight: 1.0}}\n"
        "parameters: {int8_mask: true}\ntokenizer_source: base\n",
    )
    run = subprocess.run(
        [sys.executable, "-m", "pactframe", "convert", str(cfg)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "# note: int8_mask ignored" in run.stdout
    data = yaml.safe_load(run.stdout)
    assert data["merger"]["keep_fraction"] == 0.4 and data["vocab"] == "base"
    spec = parse_config(data, base_dir=root)
    assert spec.recipe.merger.name == "ties"


def test_a_mergekit_parameters_block_in_a_pactframe_config_names_keep_fraction():
    with pytest.raises(ConfigProblems) as err:
        parse_config(
            {
                "base": "b",
                "models": [{"name": "a", "path": "a"}],
                "merger": {"name": "ties", "density": 0.2},
            },
            check_files=False,
        )
    assert "'keep_fraction'" in str(err.value) and "density" in str(err.value)


def test_convert_is_pure_data(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    conv = convert_mergekit(
        {
            "merge_method": "task_arithmetic",
            "base_model": "./b",
            "models": [{"model": "./m", "parameters": {"weight": 0.5}}],
        },
        base_dir=tmp_path,
    )
    assert conv.config == {
        "base": "./b",
        "models": [{"name": "m", "path": "./m", "weight": 0.5}],
        "merger": {"name": "task_arithmetic", "scaling": 1.0, "normalize": False},
    }


def test_validate_accepts_a_mergekit_config(zoo):
    from pactframe.cli import main

    root, _ = zoo
    cfg = mk(
        root,
        "merge_method: task_arithmetic\nbase_model: ./base\n"
        "models: [{model: ./math, parameters: {weight: 0.5}}]\n",
    )
    assert main(["validate", str(cfg)]) == 0


def test_a_top_level_parameters_block_points_to_the_mergers_own_keys():
    with pytest.raises(ConfigProblems) as err:
        parse_config(
            {
                "base": "b",
                "models": [{"name": "a", "path": "a"}],
                "merger": "ties",
                "parameters": {"density": 0.2},
            },
            check_files=False,
        )
    text = str(err.value)
    assert "keep_fraction: 0.2" in text and "models[].weight" in text
    assert "density: 0.2}" not in text  # the old hint suggested a key ties refuses
