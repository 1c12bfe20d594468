"""MergeSpec parsing: components built through the registry, relative paths,
routing by rules, and every problem collected with a helpful message."""

from __future__ import annotations

import pytest
import yaml

from pactframe.config import ConfigProblems, analyse_config, load_config, parse_config
from pactframe.contracts import Merger, Preprocessor
from tests.integration._pipeline_helpers import test_registry


@pytest.fixture
def reg():
    return test_registry()


@pytest.fixture
def files(tmp_path):
    for name in ("base.safetensors", "a.safetensors", "b.safetensors", "cov.safetensors"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def _cfg(**over):
    data = {
        "base": "base.safetensors",
        "models": [
            {"name": "a", "path": "a.safetensors", "covariance": "cov.safetensors"},
            {"name": "b", "path": "b.safetensors"},
        ],
        "preprocessors": [{"name": "t_scale", "factor": 3.0}],
        "merger": {"name": "t_sum", "scaling": 0.5},
    }
    data.update(over)
    return data


def test_parse_builds_components_and_resolves_paths(files, reg):
    spec = parse_config(_cfg(fallback="t_mean"), registry=reg, base_dir=files)
    assert spec.base == files / "base.safetensors"
    assert [m.name for m in spec.models] == ["a", "b"]
    assert (
        spec.models[0].covariance == files / "cov.safetensors" and spec.models[1].covariance is None
    )
    assert isinstance(spec.recipe.merger, Merger) and spec.recipe.merger.scaling == 0.5
    assert isinstance(spec.recipe.preprocessors[0], Preprocessor)
    assert spec.recipe.preprocessors[0].factor == 3.0
    assert spec.fallback.name == "t_mean"


def test_default_fallback_is_average(files, registry):
    spec = parse_config(
        _cfg(preprocessors=[], merger="task_arithmetic"), registry=registry, base_dir=files
    )
    assert spec.fallback.name == "average"


def test_yaml_file_relative_to_its_folder(files, reg, tmp_path, monkeypatch):
    (files / "merge.yaml").write_text(yaml.safe_dump(_cfg(fallback="t_mean")))
    monkeypatch.chdir("/")
    spec = load_config(files / "merge.yaml", registry=reg)
    assert spec.base == files / "base.safetensors" and spec.source == files / "merge.yaml"
    assert spec.fallback.name == "t_mean"


def test_rules_route_first_match_and_inherit(files, reg):
    spec = parse_config(
        _cfg(
            fallback="t_mean",
            rules=[
                {
                    "match": "embed|lm_head",
                    "merger": {"name": "t_sum", "scaling": 0.1},
                    "preprocessors": [],
                },
                {"match": "norm", "exclude": True},
                {"match": "mlp", "preprocessors": []},  # inherits the default merger
            ],
        ),
        registry=reg,
        base_dir=files,
    )
    label, recipe = spec.route("model.embed.weight")
    assert (
        label == "rule 'embed|lm_head'"
        and recipe.merger.scaling == 0.1
        and recipe.preprocessors == ()
    )
    assert spec.route("layers.0.norm.weight") == ("rule 'norm'", None)
    label, recipe = spec.route("layers.0.mlp.up.weight")
    assert recipe.merger is spec.recipe.merger and recipe.preprocessors == ()
    assert spec.route("layers.0.attn.q.weight") == ("default", spec.recipe)


def test_unknown_keys_get_suggestions_and_mergekit_hints(files, reg):
    found = analyse_config(
        _cfg(mergre="t_sum", base_model="x", fallback="t_mean"), registry=reg, base_dir=files
    )
    text = "\n".join(found.problems)
    assert found.spec is None
    assert "unknown key 'mergre'. Did you mean 'merger'?" in text
    assert "mergekit's 'base_model' is base here" in text


def test_every_problem_is_collected(files, reg):
    data = _cfg(
        merger={"name": "t_summ"},
        preprocessors=[{"name": "t_scale", "factor": "big"}],
        device="tpu",
        compute_dtype="float16",
        seed=-1,
        output={"dtype": "int8", "shard_size": "lots"},
        models=[
            {"name": "a", "path": "missing.safetensors"},
            {"name": "a", "path": "b.safetensors"},
        ],
    )
    with pytest.raises(ConfigProblems) as info:
        parse_config(data, registry=reg, base_dir=files)
    problems = info.value.problems
    text = "\n".join(problems)
    for needle in [
        "No merger named 't_summ'",
        "Did you mean 't_sum'",  # unknown plugin
        "preprocessors[0]",
        "factor",  # bad parameter value
        "device",
        "compute_dtype",
        "seed",
        "output.dtype",
        "shard_size",
        "missing.safetensors",
        "does not exist",  # missing file
        "repeated: a",  # duplicate task names
    ]:
        assert needle in text, needle
    assert len(problems) >= 9
    assert str(info.value).startswith(f"{len(problems)} problem(s)")


def test_required_keys(files, reg):
    found = analyse_config({"models": []}, registry=reg, base_dir=files)
    text = "\n".join(found.problems)
    assert (
        "'base'" in text
        and "'merger' is required" in text
        and "models: must be a non-empty" in text
    )


def test_model_level_evaluator_is_refused(files, registry):
    found = analyse_config(
        _cfg(preprocessors=[], merger="task_arithmetic", evaluators=["accuracy"]),
        registry=registry,
        base_dir=files,
    )
    assert any("model-level evaluator" in p for p in found.problems)


def test_bad_rule_regex_and_excluded_rule_with_merger(files, reg):
    found = analyse_config(
        _cfg(
            fallback="t_mean",
            rules=[{"match": "(["}, {"match": "x", "exclude": True, "merger": "t_sum"}],
        ),
        registry=reg,
        base_dir=files,
    )
    text = "\n".join(found.problems)
    assert "rules[0]: 'match' must be a regular expression" in text
    assert "rules[1]: an excluded rule takes no merger" in text


def test_to_dict_is_json_and_complete(files, reg):
    import json

    spec = parse_config(
        _cfg(fallback="t_mean", output={"shard_size": "1MB"}), registry=reg, base_dir=files
    )
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["merger"] == {"name": "t_sum", "scaling": 0.5}
    assert d["preprocessors"] == [{"name": "t_scale", "factor": 3.0}]
    assert d["output"]["shard_size"] == 10**6 and d["fallback"] == {"name": "t_mean"}


# ------------------------------------------------ defaults, written once
DOC_DEFAULT_KEYS = (
    "device",
    "compute_dtype",
    "seed",
    "prefetch",
    "nonfinite",
    "input_dtype",
    "output.dtype",
    "output.shard_size",
    "output.copy_files",
    "output.format",
)


def _spec_default(key):
    from pactframe.config import MergeSpec, OutputSpec, spec_default

    section, _, name = key.rpartition(".")
    return spec_default(OutputSpec if section == "output" else MergeSpec, name)


def test_an_unset_key_takes_the_spec_default(files, reg):
    from pactframe.config import ModelSpec, spec_default
    from pactframe.io import DEFAULT_SHARD_SIZE
    from pactframe.nonfinite import DEFAULT_NONFINITE

    spec = parse_config(_cfg(fallback="t_mean"), registry=reg, base_dir=files)
    for key in DOC_DEFAULT_KEYS:
        section, _, name = key.rpartition(".")
        got = getattr(spec.output if section == "output" else spec, name)
        assert got == _spec_default(key), key
    assert all(m.type == spec_default(ModelSpec, "type") == "auto" for m in spec.models)
    assert spec.output.shard_size == DEFAULT_SHARD_SIZE == 2 * 10**9
    assert spec.nonfinite == DEFAULT_NONFINITE == "error"
    # to_dict leaves out the optional keys that hold their default
    resolved = spec.to_dict()
    assert "input_dtype" not in resolved and all("type" not in m for m in resolved["models"])
    cast = parse_config(_cfg(fallback="t_mean", input_dtype="cast"), registry=reg, base_dir=files)
    assert cast.to_dict()["input_dtype"] == "cast"


def test_the_documented_defaults_are_the_spec_defaults():
    """docs/config.md's key table restates each default; it must say the spec's."""
    from pathlib import Path

    from pactframe.io.units import parse_size

    page = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    documented = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[1].startswith("`"):
            documented[cells[0].strip("`")] = cells[1].strip("`")
    for key in DOC_DEFAULT_KEYS:
        assert key in documented, f"docs/config.md has no row for {key}"
        value = documented[key]
        said = parse_size(value) if key == "output.shard_size" else yaml.safe_load(value)
        assert said == _spec_default(key), f"docs/config.md: {key} defaults to {value!r}"
