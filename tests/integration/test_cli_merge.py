"""The CLI on real files: example -> validate -> merge -> diagnose, and the error paths."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from pactframe.cli import main
from tests.integration._pipeline_helpers import load_output


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "ex"
    assert main(["example", str(root)]) == 0
    return root


def test_example_layout(example):
    names = sorted(p.name for p in example.iterdir())
    assert names == [
        "base",
        "config.yaml",
        "cov-grammar.safetensors",
        "cov-paraphrase.safetensors",
        "cov-sentiment.safetensors",
        "ft-grammar",
        "ft-paraphrase",
        "ft-sentiment",
    ]
    assert (example / "ft-grammar" / "model.safetensors.index.json").exists()  # sharded
    cfg = yaml.safe_load((example / "config.yaml").read_text())
    assert cfg["preprocessors"][0]["name"] == "pact" and cfg["merger"]["name"] == "tsv_m"


def test_example_refuses_existing_dir(example, capsys):
    assert main(["example", str(example)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_validate_ok_prints_plan(example, capsys):
    assert main(["validate", str(example / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "21 tensors, 3 tasks (sentiment, grammar, paraphrase)" in out
    assert "model.layers.0.self_attn.q_proj.weight" in out and "cov[" in out
    assert "estimated peak tensor memory" in out and "OK, ready to merge" in out


def test_merge_then_force_and_report(example, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", str(example / "config.yaml"), str(out)]) == 0
    captured = capsys.readouterr()
    assert "merging [" in captured.err and "21/21 tensors" in captured.err  # progress on stderr
    assert "merged 21 tensors" in captured.out
    report = json.loads((out / "merge_report.json").read_text())
    assert report["summary"]["handled_by"] == {
        "recipe (default)": 19,
        "recipe (rule 'embed_tokens|lm_head')": 2,
    }
    q = next(t for t in report["tensors"] if t["name"].endswith("layers.0.self_attn.q_proj.weight"))
    assert set(q["evaluators"]["intrusion_energy"]["before"]) == {
        "sentiment",
        "grammar",
        "paraphrase",
    }
    assert (out / "config.json").exists()
    # the model card shows the mean intrusion energy per task, over the tensors reporting it
    values = [
        t["evaluators"]["intrusion_energy"]["before"]["grammar"]
        for t in report["tensors"]
        if "before" in t.get("evaluators", {}).get("intrusion_energy", {})
    ]
    assert len(values) == 16  # the 2-D weights; norms report "skipped"
    card = (out / "README.md").read_text()
    assert f"| before.grammar | {sum(values) / len(values):.4g} |" in card
    merged = load_output(out)
    assert len(merged) == 21 and all(torch.isfinite(v).all() for v in merged.values())
    # again without --force: refused, untouched; with --force --quiet: replaced, no progress
    assert main(["merge", str(example / "config.yaml"), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "merge",
                str(example / "config.yaml"),
                str(out),
                "--force",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "merging [" not in capsys.readouterr().err
    again = load_output(out)
    assert all(torch.equal(merged[k], again[k]) for k in merged)  # same seed, same bytes


def test_validate_lists_every_problem(example, tmp_path, capsys):
    cfg = yaml.safe_load((example / "config.yaml").read_text())
    cfg["base"] = str(example / "base")
    cfg["models"] = [
        {"name": "sentiment", "path": str(example / "ft-sentiment")},
        {
            "name": "grammar",
            "path": str(example / "ft-grammar"),
            "covariance": str(example / "cov-grammar.safetensors"),
        },
        {"name": "other", "path": str(tmp_path / "missing")},
    ]
    cfg["merger"] = {"name": "tsv_mm"}
    cfg["seeds"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("3 problem(s) in")
    assert "No merger named 'tsv_mm'" in err and "unknown key 'seeds'. Did you mean 'seed'?" in err
    assert "missing" in err and "does not exist" in err


def test_validate_checks_headers_even_when_recipe_is_wrong(example, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    ft = tmp_path / "ft-bad"
    ft.mkdir()
    sd = load_file(str(example / "ft-sentiment" / "model.safetensors"))
    sd["model.norm.weight"] = torch.ones(3)
    save_file(sd, str(ft / "model.safetensors"))
    cfg = {
        "base": str(example / "base"),
        "models": [{"name": "a", "path": str(ft)}],
        "merger": "nope",
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "No merger named 'nope'" in err and "'model.norm.weight': shape [3]" in err


def test_diagnose_writes_csv_and_plots(example, tmp_path, capsys):
    outdir = tmp_path / "diag"
    assert (
        main(["diagnose", str(example / "config.yaml"), str(outdir), "--top", "4", "--quiet"]) == 0
    )
    with open(outdir / "intrusion_energy.csv") as f:
        rows = list(csv.DictReader(f))
    q = [r for r in rows if r["tensor"] == "model.layers.0.self_attn.q_proj.weight"]
    assert {r["task"] for r in q} == {"sentiment", "grammar", "paraphrase"}
    assert all(0 <= float(r["before"]) <= 1 and 0 <= float(r["after"]) <= 1 for r in q)
    with open(outdir / "spectra.csv") as f:
        spectra = list(csv.DictReader(f))
    # an independent check of one series: the first task vector's singular values
    from safetensors.torch import load_file

    key = "model.layers.1.mlp.down_proj.weight"
    b = load_file(str(example / "base" / "model.safetensors"))[key].double()
    t = load_file(str(example / "ft-sentiment" / "model.safetensors"))[key].double()
    expected = torch.linalg.svdvals(t - b)[:4]
    got = [
        float(r["sigma"])
        for r in spectra
        if r["tensor"] == key and r["series"] == "sentiment/original"
    ]
    assert got == pytest.approx(expected.tolist(), rel=1e-5)
    assert not any(outdir.glob("*.safetensors"))  # no model written
    text = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in text
    else:
        assert (outdir / "intrusion_energy.png").stat().st_size > 0
        assert (outdir / "spectra.png").stat().st_size > 0


def test_diagnose_without_matplotlib_says_so(example, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert main(["diagnose", str(example / "config.yaml"), str(tmp_path / "d"), "--quiet"]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not list((tmp_path / "d").glob("*.png"))
    assert (tmp_path / "d" / "spectra.csv").exists()
