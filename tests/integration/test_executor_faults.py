"""Executors under faults: a worker killed mid-merge, an exception in a component, Ctrl-C,
in-memory inputs, bad settings. Every failure names the tensor and leaves no output."""

from __future__ import annotations

import io
import multiprocessing
import sys

import pytest

from pactframe.api import validate
from pactframe.cli import main
from pactframe.config import ConfigProblems, parse_config
from pactframe.errors import ConfigError, ExecutorError
from pactframe.pipeline import MergePipeline
from pactframe.plugins import make_plugin_manager
from pactframe.progress import Progress
from pactframe.registry import Registry
from pactframe.sources import Sources, StateDictSource
from tests.integration._executor_helpers import ExecutorTestPlugin
from tests.integration._pipeline_helpers import (
    _TestPlugin,
    finetune,
    load_output,
    tiny_model,
    write_models,
)


def _registry() -> Registry:
    pm = make_plugin_manager(plugins=[_TestPlugin(), ExecutorTestPlugin()])
    return Registry.from_plugin_manager(pm)


def _spec(tmp_path, merger, executor, **over):
    _, _, bp, paths = write_models(tmp_path / "in")
    data = {
        "base": str(bp),
        "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
        "merger": merger,
        "fallback": "t_mean",
        "executor": executor,
        **over,
    }
    return parse_config(data, registry=_registry())


def _nothing_left(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "pactframe-tmp" in p.name]


def _no_workers_left():
    alive = [p for p in multiprocessing.active_children() if p.name.startswith("pactframe-")]
    assert alive == [], f"worker processes still running: {alive}"


PROCS = {"name": "processes", "workers": 2, "threads": 1}
RAY = {"name": "ray", "workers": 2, "threads": 1, "max_retries": 0}


# ------------------------------------------------------------------ processes
def test_a_killed_worker_fails_the_merge_naming_its_tensor(tmp_path):
    spec = _spec(tmp_path, {"name": "t_kill", "victim": "layers.1.mlp.up.weight"}, PROCS)
    with pytest.raises(ExecutorError) as info:
        MergePipeline(spec).run(tmp_path / "out")
    text = str(info.value)
    assert "'layers.1.mlp.up.weight'" in text and "signal 9" in text, text
    assert "no output was written" in text
    _nothing_left(tmp_path)
    _no_workers_left()


def test_a_component_error_in_a_worker_is_raised_with_its_type_and_worker(tmp_path):
    spec = _spec(tmp_path, {"name": "t_fail", "after": 0}, PROCS)
    with pytest.raises(RuntimeError, match="injected failure") as info:
        MergePipeline(spec).run(tmp_path / "out")
    cause = str(info.value.__cause__)
    assert "worker process-" in cause and "tensor '" in cause
    _nothing_left(tmp_path)
    _no_workers_left()


def test_ctrl_c_stops_every_worker_and_leaves_nothing(tmp_path):
    spec = _spec(tmp_path, {"name": "t_slow", "seconds": 0.3}, PROCS)
    seen = []

    def interrupt(result):
        seen.append(result.plan.name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MergePipeline(spec).run(tmp_path / "out", on_tensor=interrupt)
    assert len(seen) == 1
    _nothing_left(tmp_path)
    _no_workers_left()


def test_a_prepass_without_a_split_runs_whole_on_one_worker(tmp_path):
    """``t_globalnorm`` has ``prepare`` only: its prepass is one unit, and the output is the
    local one."""
    local = _spec(tmp_path / "a", "t_sum", None, preprocessors=["t_globalnorm"])
    MergePipeline(local).run(tmp_path / "a" / "out")
    spec = _spec(tmp_path / "b", "t_sum", PROCS, preprocessors=["t_globalnorm"])
    report = MergePipeline(spec).run(tmp_path / "b" / "out")
    a, b = load_output(tmp_path / "a" / "out"), load_output(tmp_path / "b" / "out")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    prepass = [w for w in report["executor"]["workers"].values() if w["prepass_s"] > 0]
    assert len(prepass) == 1


def test_in_memory_inputs_need_the_local_executor(tmp_path):
    spec = _spec(tmp_path, "t_sum", PROCS)
    base = tiny_model(0)
    sources = Sources(
        StateDictSource(base, "base"),
        tuple(StateDictSource(finetune(base, i), f"ft{i}") for i in range(2)),
        (None, None),
    )
    with pytest.raises(ConfigError, match="'local' executor"):
        MergePipeline(spec, sources=sources).run(tmp_path / "out")
    _nothing_left(tmp_path)


def test_validate_checks_the_executor_before_reading_tensors(tmp_path, monkeypatch):
    spec = _spec(tmp_path, "t_sum", {"name": "processes", "devices": ["cuda:7"]})
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigProblems, match="cuda:7"):
        validate(spec)
    with pytest.raises(ConfigProblems, match="cuda:7"):
        MergePipeline(spec).run(tmp_path / "out")
    _nothing_left(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigProblems, match=r"pactframe\[ray\]"):
        validate(spec, executor="ray", registry=_registry())


def test_validate_and_the_cli_list_every_problem_at_once(tmp_path, monkeypatch, capsys):
    """api.validate, api.check and ``pactframe validate`` are one check: the executor's
    settings and the plan's problems are reported together."""
    import torch

    from pactframe.api import check

    spec = _spec(tmp_path, "t_peek", {"name": "processes", "devices": ["cuda:7"]})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    found = check(spec)
    assert found.plan is None and not found.ok
    assert [p.split(":")[0] for p in found.problems] == [
        "executor 'processes'",
        "merger 't_peek' (tests.integration._pipeline_helpers.PeekMerger, the default recipe)",
    ]
    with pytest.raises(ConfigProblems) as info:
        validate(spec)
    assert info.value.problems == list(found.problems)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"base: {spec.base}\nmodels:\n"
        + "".join(f"  - {{name: {m.name}, path: {m.path}}}\n" for m in spec.models)
        + "merger: task_arithmetic\nexecutor: {name: processes, devices: [cuda:7]}\n"
    )
    assert main(["validate", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "cuda:7" in err
    assert validate(cfg, executor="local").tensors  # the flag replaces the executor


def test_cli_merge_with_executor_flags_shows_one_progress_line_across_workers(
    tmp_path, capsys
):
    _, _, bp, paths = write_models(tmp_path / "in")
    models = "\n".join(f"  - {{name: t{i}, path: {p}}}" for i, p in enumerate(paths))
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"base: {bp}\nmodels:\n{models}\nmerger: task_arithmetic\n")
    argv = ["merge", str(cfg), str(tmp_path / "out"), "--executor", "processes", "--workers", "2"]
    code = main(argv)
    n = len(tiny_model(0))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "executor processes x2" in captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("merging")]
    assert lines and all(line.startswith("merging (processes x2)") for line in lines)
    assert f"{n}/{n} tensors" in lines[-1] and lines[-1].endswith("done")


def test_the_progress_line_counts_tensors_from_every_worker(tmp_path):
    spec = _spec(tmp_path, "t_sum", PROCS)
    n = len(tiny_model(0))
    stream = io.StringIO()
    bar = Progress(n, 1, stream=stream, log_interval=0.0)
    report = MergePipeline(spec).run(tmp_path / "out", progress=bar)
    assert bar.done_tensors == len(report["tensors"]) == n
    assert len(report["executor"]["workers"]) == 2


# ------------------------------------------------------------------ ray
def test_ray_fails_the_merge_naming_the_tensor_of_a_lost_worker(tmp_path, ray_cluster):
    spec = _spec(tmp_path, {"name": "t_kill", "victim": "layers.1.mlp.up.weight"}, RAY)
    with pytest.raises(ExecutorError) as info:
        MergePipeline(spec).run(tmp_path / "out")
    assert "'layers.1.mlp.up.weight'" in str(info.value)
    _nothing_left(tmp_path)


def test_ray_retries_a_task_whose_worker_died(tmp_path, ray_cluster):
    marker = tmp_path / "killed-once"
    killer = {"name": "t_kill", "victim": "layers.1.mlp.up.weight", "once_marker": str(marker)}
    spec = _spec(tmp_path / "r", killer, {**RAY, "max_retries": 2})
    MergePipeline(spec).run(tmp_path / "r" / "out")
    assert marker.exists()  # a worker did die, and the retry finished the merge
    local = _spec(tmp_path / "l", "t_mean", None)
    MergePipeline(local).run(tmp_path / "l" / "out")
    a, b = load_output(tmp_path / "l" / "out"), load_output(tmp_path / "r" / "out")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_ray_component_errors_and_ctrl_c_leave_nothing(tmp_path, ray_cluster):
    spec = _spec(tmp_path, {"name": "t_fail", "after": 0}, RAY)
    with pytest.raises(RuntimeError, match="injected failure"):
        MergePipeline(spec).run(tmp_path / "out")
    _nothing_left(tmp_path)
    slow = _spec(tmp_path / "s", {"name": "t_slow", "seconds": 0.3}, RAY)

    def interrupt(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MergePipeline(slow).run(tmp_path / "s" / "out", on_tensor=interrupt)
    _nothing_left(tmp_path / "s")
