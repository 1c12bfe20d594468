"""The executor layer's parts: chunking, ordering, device assignment, overrides, the
order-independent modulator file, and the contract checks for executors and split
prepasses (that they catch what they should)."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pactframe import MergedTensor, Merger, build_registry
from pactframe.api import with_executor
from pactframe.config import parse_config
from pactframe.contracts import Executor, splits_prepass
from pactframe.errors import ConfigError, ExecutorError
from pactframe.execution import InProcessRunner, contiguous_chunks, ordered
from pactframe.modulators import ModulatorReader, ModulatorWriter
from pactframe.testing import check_component


@given(st.lists(st.integers(), max_size=40), st.integers(1, 12))
def test_contiguous_chunks_cover_the_items_in_order_in_at_most_parts_runs(items, parts):
    """Concatenating the runs gives the items back; at most ``parts`` runs, none empty
    unless there are no items, and lengths differ by at most one."""
    runs = contiguous_chunks(items, parts)
    assert [x for run in runs for x in run] == items
    assert 1 <= len(runs) <= max(1, parts)
    if items:
        lengths = [len(r) for r in runs]
        assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1
    else:
        assert runs == [()]


@given(st.permutations(list(range(12))))
def test_ordered_yields_values_in_index_order_whatever_the_arrival_order(arrival):
    """Any arrival order of (index, value) pairs comes out sorted by index."""
    assert list(ordered(((i, i * 10) for i in arrival), 12)) == [i * 10 for i in range(12)]


def test_ordered_says_which_units_never_came_back():
    with pytest.raises(ExecutorError, match=r"units \[1\]"):
        list(ordered([(0, "a"), (2, "c")], 3))


def test_devices_are_assigned_round_robin(registry):
    ex = registry.create("executor", "processes", workers=5, devices=["cuda:0", "cuda:1"])
    assert ex.worker_devices() == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert registry.create("executor", "processes", workers=2).worker_devices() == [None, None]
    assert registry.create("executor", "processes", devices="cpu").devices == ("cpu",)


def test_bad_executor_settings_are_parameter_errors(registry):
    from pactframe.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="devices"):
        registry.create("executor", "processes", devices=["gpu0"])
    with pytest.raises(InvalidParameterError, match="workers"):
        registry.create("executor", "ray", workers=0)
    with pytest.raises(InvalidParameterError, match="memory"):
        registry.create("executor", "ray", memory="lots")
    assert registry.create("executor", "ray", memory="2GB").memory == 2 * 10**9


def test_devices_that_do_not_exist_are_reported(registry, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ex = registry.create("executor", "processes", devices=["cuda:1", "cuda:2"])
    (problem,) = ex.check()
    assert "'cuda:2' does not exist" in problem and "2 CUDA device(s)" in problem


def _spec(tmp_path, executor=None):
    data: dict[str, Any] = {"base": "b", "models": [{"name": "a", "path": "m"}], "merger": "ties"}
    if executor is not None:
        data["executor"] = executor
    return parse_config(data, base_dir=tmp_path, check_files=False)


def test_config_cli_and_api_overrides_of_the_executor(tmp_path):
    spec = _spec(tmp_path)
    assert spec.executor is None  # no key: this process
    assert "executor" not in spec.to_dict()
    assert with_executor(spec) is spec
    procs = with_executor(spec, workers=3).executor
    assert procs is not None and (procs.name, procs.workers) == ("processes", 3)
    ray = with_executor(spec, {"name": "ray", "num_cpus": 2}, workers=4).executor
    assert ray is not None and (ray.name, ray.workers, ray.num_cpus) == ("ray", 4, 2)
    configured = _spec(tmp_path, {"name": "ray", "address": "auto", "workers": 2})
    kept = with_executor(configured, workers=8).executor
    assert kept is not None and (kept.name, kept.address, kept.workers) == ("ray", "auto", 8)
    with pytest.raises(ConfigError, match="no 'workers' setting"):
        with_executor(spec, "local", workers=2)
    problems = _problems(tmp_path, {"name": "processes", "workerz": 2})
    assert any("workerz" in p and "executor" in p for p in problems)


def _problems(tmp_path, executor):
    from pactframe.config import analyse_config

    data = {"base": "b", "models": [{"name": "a", "path": "m"}], "merger": "ties"}
    found = analyse_config({**data, "executor": executor}, base_dir=tmp_path, check_files=False)
    return found.problems


def test_the_local_executor_sets_and_restores_torch_threads(registry):
    before = torch.get_num_threads()
    ex = registry.create("executor", "local", threads=before + 1)
    with ex.start() as runner:
        assert isinstance(runner, InProcessRunner)
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_the_modulator_file_does_not_depend_on_arrival_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"w{i}": [torch.rand(3, 5, generator=g) > 0.5 for _ in range(2)] for i in range(4)}

    def write(folder, order):
        folder.mkdir()
        w = ModulatorWriter(folder, ("a", "b"))
        for key in order:
            w.add(key, (3, 5), ("a", "b"), tensors[key], (1.0, float(key[1:])))
        path = w.finish(order=sorted(tensors))
        assert path is not None
        return path

    first = write(tmp_path / "x", ["w0", "w1", "w2", "w3"])
    second = write(tmp_path / "y", ["w2", "w0", "w3", "w1"])
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(
        second.read_bytes()
    ).digest()
    reader = ModulatorReader(second)
    assert reader.task_names == ("a", "b")


# ------------------------------------------------------------------ the contract checks
class _Square:
    def __call__(self, unit):
        return unit * unit


class _DroppingRunner:
    parallelism = 1

    def map(self, task, units):
        for i, u in enumerate(units[:-1]):  # forgets the last unit
            yield i, task(u)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def close(self):
        pass


@attrs.frozen
class DroppingExecutor(Executor):
    """Test-only executor whose runner forgets the last unit."""

    name: ClassVar[str] = "t_dropping"

    def start(self):
        return _DroppingRunner()


def test_the_executor_check_catches_a_runner_that_drops_a_unit():
    with pytest.raises(AssertionError, match="yielded indices"):
        check_component(DroppingExecutor)


def test_the_builtin_in_process_executor_passes_the_check(registry):
    check_component(registry.get("executor", "local"))


@attrs.frozen
class CountingMerger(Merger):
    """Test-only two-pass merger whose split is NOT exact: the state counts the runs."""

    name: ClassVar[str] = "t_counting"
    needs_prepass: ClassVar[bool] = True

    def prepare(self, bundles):
        return self.prepare_reduce([self.prepare_map(bundles)])

    def prepare_map(self, bundles):
        return sum(1 for _ in bundles)

    def prepare_reduce(self, partials):
        return float(len(list(partials)))  # wrong: depends on the cut

    def merge(self, bundle, state=None):
        return MergedTensor(torch.stack(bundle.task_vectors).sum(0) * (state or 1.0))


def test_the_split_check_catches_an_inexact_split():
    assert splits_prepass(CountingMerger())
    with pytest.raises(AssertionError, match="the split must be exact"):
        check_component(CountingMerger)


def test_builtin_two_pass_components_split_their_prepass():
    registry = build_registry()
    for kind, name, params in (
        ("preprocessor", "pave", {}),
        ("merger", "ties", {"trim_scope": "global"}),
        ("merger", "emr", {}),
    ):
        comp = registry.create(kind, name, **params)
        assert comp.needs_prepass and splits_prepass(comp), name
