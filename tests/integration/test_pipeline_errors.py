"""Every bad input gets a clear error naming the file/tensor, before any tensor math,
and leaves no output folder; an interrupted merge leaves no output and no temp folder."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pactframe.api import merge, validate
from pactframe.config import ConfigProblems
from pactframe.covariance_io import save_covariances
from pactframe.errors import CheckpointError, PactframeError
from tests.integration._pipeline_helpers import (
    FailingMerger,
    save_single,
    test_registry,
    tiny_model,
    write_models,
)


def _config(bp, paths, **over):
    data = {
        "base": str(bp),
        "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
        "merger": "t_sum",
        "fallback": "t_mean",
    }
    data.update(over)
    return data


def _fails(tmp_path, cfg, *needles, exc=PactframeError):
    out = tmp_path / "out"
    with pytest.raises(exc) as info:
        merge(cfg, out, registry=test_registry())
    text = str(info.value)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "pactframe-tmp" in p.name]
    return text


def test_a_supports_that_reads_values_is_a_plan_problem(tmp_path):
    """The route of every tensor is decided in the plan, on meta tensors: a supports()
    that needs values is refused before any tensor is read, naming the merger, the
    exception, the tensors (and the rule's recipe) and what to change."""
    _, _, bp, paths = write_models(tmp_path)
    text = _fails(
        tmp_path,
        _config(bp, paths, merger="t_peek"),
        "merger 't_peek'",
        "PeekMerger",
        "the default recipe",
        "supports() raised",
        "'layers.0.attn.q.weight'",
        "shape and dtype alone",
        exc=ConfigProblems,
    )
    assert "meta" in text
    # a rule's recipe is named by its rule; the default recipe's tensors are fine here
    rules = [{"match": r"\.q\.", "merger": "t_peek"}]
    text = _fails(tmp_path, _config(bp, paths, rules=rules), "t_peek' (", exc=ConfigProblems)
    assert "PeekMerger, rule '" in text and "the default recipe" not in text
    assert "'layers.0.attn.q.weight'" in text and "'layers.0.mlp.up.weight'" not in text
    with pytest.raises(ConfigProblems, match="supports\\(\\) raised"):
        validate(_config(bp, paths, merger="t_peek"), registry=test_registry())


def test_missing_model_file(tmp_path):
    _, _, bp, paths = write_models(tmp_path)
    _fails(
        tmp_path,
        _config(bp, [paths[0], tmp_path / "gone.safetensors"]),
        "models[1] (t1).path",
        "gone.safetensors",
        "does not exist",
    )


def test_pickle_checkpoint_is_refused(tmp_path):
    _, _, bp, paths = write_models(tmp_path)
    pkl = tmp_path / "ft.bin"
    pkl.write_bytes(b"\x80\x04junk")
    _fails(tmp_path, _config(bp, [paths[0], pkl]), "ft.bin", "pickle", "save_file")


def test_key_sets_differ(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    odd = dict(fts[1])
    del odd["lm_head.weight"]
    odd["extra.weight"] = torch.ones(2)
    save_single(odd, paths[1])
    _fails(
        tmp_path,
        _config(bp, paths),
        "model 't1'",
        "lacks 1 tensor",
        "'lm_head.weight'",
        "has 1 tensor(s) the base",
        "'extra.weight'",
        str(paths[1]),
    )


def test_shape_mismatch(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    odd = dict(fts[0])
    odd["layers.1.attn.q.weight"] = torch.ones(8, 9)
    save_single(odd, paths[0])
    _fails(
        tmp_path,
        _config(bp, paths),
        "'layers.1.attn.q.weight'",
        "shape [8, 9]",
        "model 't0'",
        "[8, 8] in the base",
    )


def test_dtype_mismatch(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    odd = dict(fts[0])
    odd["embed.weight"] = odd["embed.weight"].half()
    save_single(odd, paths[0])
    _fails(
        tmp_path,
        _config(bp, paths),
        "'embed.weight'",
        "model 't0': 1 tensor(s) F16 where the base has F32",
        "input_dtype: cast",
    )


def test_covariance_that_does_not_fit_its_tensor(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    cov = tmp_path / "cov.safetensors"
    save_covariances(
        cov,
        {"layers.0.mlp.up.weight": torch.eye(16), "nope.weight": torch.eye(2)},
        {"layers.0.mlp.up.weight": "linear", "nope.weight": "linear"},
        {"layers.0.mlp.up.weight": 10, "nope.weight": 10},
    )
    cfg = _config(bp, paths)
    cfg["models"][0]["covariance"] = str(cov)
    text = _fails(
        tmp_path,
        cfg,
        "cov.safetensors",
        "'layers.0.mlp.up.weight'",
        "[16, 16]",
        "needs (8, 8)",
        "'nope.weight'",
        "not a tensor of the base",
    )
    assert text.startswith("2 problem(s)")


def test_covariance_conv1d_layout_uses_axis_0(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    cov = tmp_path / "cov.safetensors"
    # layers.0.mlp.up.weight is (16, 8): as conv1d its d_in is 16
    save_covariances(
        cov,
        {"layers.0.mlp.up.weight": torch.eye(16)},
        {"layers.0.mlp.up.weight": "conv1d"},
        {"layers.0.mlp.up.weight": 4},
    )
    cfg = _config(bp, paths)
    cfg["models"][0]["covariance"] = str(cov)
    report = merge(cfg, tmp_path / "out", registry=test_registry())
    assert report["summary"]["tensors"] == len(base)


def test_not_a_covariance_file(tmp_path):
    _, _, bp, paths = write_models(tmp_path)
    cfg = _config(bp, paths)
    cfg["models"][1]["covariance"] = str(paths[0])  # a checkpoint, not a covariance file
    _fails(tmp_path, cfg, "model 't1'", "not a pactframe covariance file")


def test_unknown_plugin_bad_parameter_and_unknown_key(tmp_path):
    _, _, bp, paths = write_models(tmp_path)
    cfg = _config(
        bp,
        paths,
        merger={"name": "t_sum", "scaling": -1.0},
        preprocessors=["t_scal"],
        fallbak="t_mean",
    )
    text = _fails(
        tmp_path,
        cfg,
        "'scaling' parameter",
        "Got -1.0",
        "No preprocessor named 't_scal'",
        "Did you mean 't_scale'",
        "unknown key 'fallbak'",
        "Did you mean 'fallback'",
        exc=ConfigProblems,
    )
    assert text.startswith("3 problem(s)")


def test_corrupt_checkpoint(tmp_path):
    _, _, bp, paths = write_models(tmp_path)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    _fails(tmp_path, _config(bp, paths), str(paths[1]), "truncated or corrupt")


def test_existing_output_is_refused_without_force(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists.*--force"):
        merge(_config(bp, paths), out, registry=test_registry())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    merge(_config(bp, paths), out, registry=test_registry(), force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_interrupted_merge_leaves_no_output_and_no_temp(tmp_path):
    base, fts, bp, paths = write_models(tmp_path, layers=4)
    reg = test_registry()
    failing = FailingMerger(after=3)
    from pactframe.config import parse_config
    from pactframe.pipeline import MergePipeline

    spec = parse_config(_config(bp, paths, merger="t_fail", fallback="t_fail"), registry=reg)
    import attrs

    spec = attrs.evolve(spec, fallback=failing, recipe=attrs.evolve(spec.recipe, merger=failing))
    with pytest.raises(RuntimeError, match="injected failure"):
        MergePipeline(spec).run(tmp_path / "out")
    assert len(failing.calls) == 4  # it really got some tensors done first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([bp.name, *(p.name for p in paths)])


def test_keyboard_interrupt_mid_merge_cleans_up(tmp_path):
    base, fts, bp, paths = write_models(tmp_path, layers=3)
    from pactframe.config import parse_config
    from pactframe.pipeline import MergePipeline

    spec = parse_config(_config(bp, paths), registry=test_registry())
    seen = []

    def stop(result):
        seen.append(result.plan.name)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MergePipeline(spec).run(tmp_path / "out", on_tensor=stop)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_non_mergedtensor_result_is_a_clear_error(tmp_path):
    import attrs

    from pactframe.config import parse_config
    from pactframe.pipeline import MergePipeline

    _, _, bp, paths = write_models(tmp_path)
    spec = parse_config(_config(bp, paths), registry=test_registry())

    class Bad(type(spec.recipe.merger)):
        def merge(self, bundle, state=None):
            return bundle.task_vectors[0][:1]

    spec = attrs.evolve(spec, recipe=attrs.evolve(spec.recipe, merger=Bad()))
    with pytest.raises(PactframeError, match="merger 't_sum' returned"):
        MergePipeline(spec).run(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_saved_with_wrong_header_dtype_is_rejected(tmp_path):
    save_file({"w": torch.ones(2, dtype=torch.complex64)}, str(tmp_path / "c.safetensors"))
    base = tiny_model(0)
    bp = save_single(base, tmp_path / "b.safetensors")
    _fails(tmp_path, _config(bp, [tmp_path / "c.safetensors"]), "c.safetensors", "dtype 'C64'")


def test_covariance_layouts_disagree(tmp_path):
    _, _, bp, paths = write_models(tmp_path)
    key = "layers.0.attn.q.weight"  # square, so both layouts fit its shape
    cfg = _config(bp, paths)
    for i, layout in enumerate(("linear", "conv1d")):
        cov = tmp_path / f"cov{i}.safetensors"
        save_covariances(cov, {key: torch.eye(8)}, {key: layout}, {key: 3})
        cfg["models"][i]["covariance"] = str(cov)
    _fails(tmp_path, cfg, f"tensor {key!r}", "disagree on its layout", "['conv1d', 'linear']")


def test_sigterm_mid_merge_leaves_nothing(tmp_path):
    """A merge killed with SIGTERM (as `pactframe merge` handles it) cleans up."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    _, _, bp, paths = write_models(tmp_path, layers=20)
    script = (
        "import sys; from pactframe.api import merge; "
        "from pactframe.cli.merge_cmd import interrupt_on_sigterm; "
        "from tests.integration._pipeline_helpers import test_registry; "
        "interrupt_on_sigterm(); "
        f"merge({{'base': {str(bp)!r}, 'models': [{{'name': 'a', 'path': {str(paths[0])!r}}}], "
        "'merger': {'name': 't_slow', 'seconds': 0.2}, 'fallback': 't_mean'}, "
        f"{str(tmp_path / 'out')!r}, registry=test_registry())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[2], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not any("pactframe-tmp" in p.name for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "merge never started"
        time.sleep(0.05)
    time.sleep(0.5)  # some tensors written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "pactframe-tmp" in p.name]
