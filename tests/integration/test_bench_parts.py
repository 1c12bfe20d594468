"""Pieces of pactframe_bench against hand-worked or independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pactframe_bench.cache import recipe_dir, recipe_key
from pactframe_bench.finetune import linear_warmup_decay
from pactframe_bench.merge import merge_in_memory
from pactframe_bench.methods import Method, reduced_methods, standard_methods
from pactframe_bench.report import summarize
from pactframe_bench.text_data import split_balanced
from pactframe_bench.vision_small import view


def test_recipe_key_ignores_key_order_and_sees_every_value(tmp_path):
    assert recipe_key({"a": 1, "b": [1, 2]}) == recipe_key({"b": [1, 2], "a": 1})
    assert recipe_key({"a": 1}) != recipe_key({"a": 2})
    folder = recipe_dir("suite", {"a": 1}, tmp_path)
    assert folder == recipe_dir("suite", {"a": 1}, tmp_path)
    assert (folder / "recipe.json").is_file()


def test_split_balanced_hand_example():
    by_class = {
        "b": [f"b{i}" for i in range(10)] + ["shared"],
        "a": [f"a{i}" for i in range(10)] + ["shared", "a0"],
    }
    classes, splits = split_balanced(by_class, {"train": 6, "validation": 2, "test": 4}, seed=3)
    assert classes == ("a", "b")
    # ceil(size / 2) per class and split: 3 train, 1 validation, 2 test per class.
    for split, per_class in (("train", 3), ("validation", 1), ("test", 2)):
        texts, labels = splits[split]
        assert sorted(labels) == [0] * per_class + [1] * per_class
        assert all(t[0] == "ab"[y] for t, y in zip(texts, labels))
    every = [t for s in splits.values() for t in s[0]]
    assert len(every) == len(set(every)) and "shared" not in every
    again = split_balanced(by_class, {"train": 6, "validation": 2, "test": 4}, seed=3)[1]
    assert again == splits


def test_vision_views_match_numpy():
    images = torch.rand(3, 28, 28)
    labels = torch.tensor([3, 4, 8])
    x = images.numpy()
    rot, y = view("rot90", images, labels)
    np.testing.assert_allclose(rot.numpy(), np.rot90(x, 1, axes=(1, 2)).reshape(3, -1))
    assert torch.equal(y, labels)
    flip, _ = view("flip", images, labels)
    np.testing.assert_allclose(flip.numpy(), x[:, :, ::-1].reshape(3, -1))
    inv, _ = view("invert", images, labels)
    np.testing.assert_allclose(inv.numpy(), (1 - x).reshape(3, -1), rtol=1e-6)
    _, parity = view("parity", images, labels)
    assert parity.tolist() == [1, 0, 0]
    _, mod3 = view("digits_mod3", images, labels)
    assert mod3.tolist() == [0, 1, 2]
    blocks, _ = view("blocks", images, labels)
    # A block shuffle permutes pixels: same multiset per image, different order.
    np.testing.assert_allclose(np.sort(blocks.numpy(), 1), np.sort(x.reshape(3, -1), 1))
    assert not np.allclose(blocks.numpy(), x.reshape(3, -1))


def test_learning_rate_schedule_hand_values():
    # 10 steps, 20% warm-up = 2 steps: 1/2, 2/2, then (10 - s) / 8.
    got = [linear_warmup_decay(s, 10, 0.2) for s in range(10)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


def test_in_memory_merge_scaling_is_linear_and_matches_task_arithmetic():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 5, generator=g), "b": torch.randn(6, generator=g)}
    models = {
        t: {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()} for t in ("x", "y")
    }
    config = {"merger": {"name": "task_arithmetic", "scaling": 1.0}, "seed": 0}
    result = merge_in_memory(base, models, config)
    state = result.states(base, 0.3)
    for k in base:
        expected = base[k] + 0.3 * ((models["x"][k] - base[k]) + (models["y"][k] - base[k]))
        torch.testing.assert_close(state[k], expected)


def test_summarize_means_and_standard_deviations():
    def seed(acc, ind):
        return {
            "zero_shot": {"mean_accuracy": 0.5, "tasks": {"t": {"accuracy": 0.5}}},
            "individual": {"t": ind},
            "rows": {
                "ta": {
                    "test": {"mean_accuracy": acc, "mean_normalized_accuracy": acc / ind},
                    "merge_seconds": 1.0,
                    "chosen": {"scaling": 0.3},
                }
            },
        }

    rows = summarize([seed(0.6, 0.8), seed(0.7, 0.8)])
    ta = rows[2]
    assert ta["method"] == "ta"
    assert ta["accuracy"][0] == pytest.approx(0.65)
    assert ta["accuracy"][1] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert rows[0]["normalized"][0] == pytest.approx(0.5 / 0.8)


def test_method_table_covers_the_issue_and_uses_registered_components(registry):
    names = [m.name for m in standard_methods()]
    for required in (
        "average",
        "task_arithmetic",
        "ties",
        "dare+ties",
        "emr",
        "tsv_m",
        "iso_c",
        "iso_cts",
        "pave+task_arithmetic",
        "pave+ties",
        "pave+emr",
    ):
        assert required in names
    for backbone in ("task_arithmetic", "tsv_m", "iso_c", "iso_cts"):
        assert f"pact+{backbone}" in names and f"efficient_pact+{backbone}" in names
    for m in standard_methods() + reduced_methods():
        for kind, name in m.components():
            assert (kind, name) in registry, (m.name, kind, name)
        for variant in m.variants:
            merger, pres = m.configure(variant)
            registry.build("merger", merger)
            for p in pres:
                registry.build("preprocessor", p)


class _CountingSuite:
    """A two-task linear 'suite': accuracy = fraction of the merged weight's entries that
    are positive; counts evaluations so a test can see what was recomputed."""

    task_names = ("a", "b")

    def __init__(self, folder):
        self.folder = folder
        self.evaluations = 0

    def base_state(self):
        return {"w": torch.zeros(2, 2)}

    def finetuned_state(self, task):
        return {"w": torch.full((2, 2), 1.0 if task == "a" else 2.0)}

    def covariance_file(self, task):
        return None

    def individual_accuracy(self, split):
        return {"a": 1.0, "b": 1.0}

    def evaluate(self, state, split):
        self.evaluations += 1
        acc = float((state["w"] > 0).float().mean())
        return {"mean_accuracy": acc, "mean_normalized_accuracy": acc}


def test_compare_reuses_a_method_row_from_another_method_list_of_the_same_seed(tmp_path):
    """A method already compared (same recipe key) in another results file of the seed's
    folder is copied, not recomputed; a method never compared is computed."""
    from pactframe_bench.compare import compare
    from pactframe_bench.methods import Method

    ta = Method("task_arithmetic", {"name": "task_arithmetic"}, scalings=(0.5, 1.0))
    avg = Method("average", {"name": "average"})
    suite = _CountingSuite(tmp_path)
    first = compare(suite, [ta, avg], tmp_path / "results-first.json", log=lambda m: None)
    spent = suite.evaluations
    logs: list[str] = []
    second = compare(suite, [ta], tmp_path / "results-second.json", log=logs.append)
    assert second["rows"]["task_arithmetic"] == first["rows"]["task_arithmetic"]
    assert suite.evaluations == spent + 1  # only the zero-shot evaluation of the new file
    assert any("reused" in line for line in logs)
    changed = Method("task_arithmetic", {"name": "task_arithmetic"}, scalings=(1.0,))
    compare(suite, [changed], tmp_path / "results-third.json", log=lambda m: None)
    assert suite.evaluations > spent + 2  # a different recipe is recomputed


class _PeakedSuite(_CountingSuite):
    """Validation score peaks where the merged weight is 9 (task arithmetic: w = 3 a)."""

    def evaluate(self, state, split):
        self.evaluations += 1
        score = 1.0 - abs(float(state["w"].mean()) - 9.0) / 100.0
        return {"mean_accuracy": score, "mean_normalized_accuracy": score}


def test_scaling_sweep_goes_past_the_grid_top_while_the_best_is_there(tmp_path):
    """Grid (0.5, 1.0), optimum a = 3: the sweep extends x1.5 (1.5, 2.25, 3.375, 5.0625)
    and stops once the score drops; a stored row chosen at the grid top is recomputed."""
    from pactframe_bench.compare import compare, tune_method
    from pactframe_bench.methods import Method

    from pactframe.registry import build_registry

    ta = Method("task_arithmetic", {"name": "task_arithmetic"}, scalings=(0.5, 1.0))
    suite = _PeakedSuite(tmp_path)
    models = {t: suite.finetuned_state(t) for t in suite.task_names}
    tuned = tune_method(suite, ta, models, None, build_registry())
    assert [e["scaling"] for e in tuned.sweep] == [0.5, 1.0, 1.5, 2.25, 3.375, 5.0625]
    assert tuned.chosen == {"scaling": 3.375}

    stale = {"rows": {"task_arithmetic": {"key": None}}, "zero_shot": {}, "individual": {}}
    from pactframe_bench.cache import recipe_key, write_json

    key = recipe_key({"method": repr(ta)})
    stale["rows"]["task_arithmetic"] = {
        "key": key,
        "chosen": {"scaling": 1.0},
        "sweep": [
            {"variant": {}, "scaling": 0.5, "validation_score": 0.5},
            {"variant": {}, "scaling": 1.0, "validation_score": 0.9},
        ],
    }
    write_json(tmp_path / "results-old.json", stale)
    rows = compare(suite, [ta], tmp_path / "results-old.json", log=lambda m: None)["rows"]
    assert rows["task_arithmetic"]["chosen"] == {"scaling": 3.375}


def test_efficient_rows_are_efficient_end_to_end_and_keep_their_backbones_grid(registry):
    """efficient_pact+X merges with the PACT preset and randomized_svd (which reaches PACT
    and the backbone), tunes the same PACT variants, and its reduced grid is X's."""
    table = {m.name: m for m in standard_methods()}
    reduced = {m.name: m for m in reduced_methods()}
    for backbone in ("task_arithmetic", "tsv_m", "iso_c", "iso_cts"):
        exact, fast = table[f"pact+{backbone}"], table[f"efficient_pact+{backbone}"]
        assert fast.merger == {"name": f"pact_{backbone}", "decomposer": "randomized_svd"}
        assert fast.preprocessors == () and fast.scalings == exact.scalings
        assert [sorted(k.split(".", 1)[1] for k in v) for v in fast.variants] == [
            sorted(k.split(".", 1)[1] for k in v) for v in exact.variants
        ]
        merger = registry.build("merger", fast.configure(fast.variants[1])[0])
        assert merger.decomposer.name == "randomized_svd"
        assert merger.aligner.decomposer.name == "randomized_svd"
        assert reduced[fast.name].scalings == reduced[exact.name].scalings


def _scaled_merger(default: float) -> object:
    """A plugin registering merger 'probe' whose one parameter defaults to ``default``."""
    import attrs as _attrs

    from pactframe import MergedTensor, Merger, hookimpl, param

    @_attrs.frozen
    class Probe(Merger):
        name = "probe"
        scaling: float = param(default)

        def merge(self, bundle, state=None):
            return MergedTensor(self.scaling * bundle.task_vectors[0])

    class Plugin:
        @hookimpl
        def pactframe_register_mergers(self):
            return [Probe]

    return Plugin()


def test_a_rows_cache_key_changes_with_a_components_defaults():
    """The results cache is keyed by the resolved configuration: the same method whose
    component changed a default (code change, no config change) gets a new key, so its
    stale row is not reused; an unchanged one keeps its key."""
    from pactframe_bench.compare import method_key

    from pactframe.plugins import make_plugin_manager
    from pactframe.registry import build_registry

    def registry_with(default):
        pm = make_plugin_manager(load_entrypoints=False, plugins=[_scaled_merger(default)])
        return build_registry(pm)

    method = Method("probe", {"name": "probe"})
    assert method_key(method, registry_with(1.0)) == method_key(method, registry_with(1.0))
    assert method_key(method, registry_with(1.0)) != method_key(method, registry_with(2.0))


def test_a_scaling_grid_needs_a_merger_that_declares_its_linear_scaling(tmp_path):
    """The sweep asks the merger (Merger.linear_scaling) instead of assuming a linear
    ``scaling``: slerp declares none, so a slerp method with a grid is skipped, saying why."""
    from pactframe_bench.compare import available, compare, scaling_parameter
    from pactframe_bench.methods import Method

    from pactframe.registry import build_registry

    registry = build_registry()
    assert scaling_parameter(registry, "slerp") is None
    assert scaling_parameter(registry, "pact_tsv_m") == "scaling"
    gridded = Method("slerp", {"name": "slerp"}, scalings=(0.5, 1.0))
    assert "linear_scaling" in available(gridded, registry)
    assert available(Method("slerp", {"name": "slerp"}), registry) is None
    assert all(available(m, registry) is None for m in standard_methods())
    results = compare(
        _CountingSuite(tmp_path), [gridded], tmp_path / "results.json", log=lambda m: None
    )
    assert "linear_scaling" in results["skipped"]["slerp"]
    assert "slerp" not in results["rows"]
