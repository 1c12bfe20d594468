"""The registry: discovery, duplicate and unknown names, contract enforcement,
blocking, hook-name validation, and construction from configs.

Registries are built explicitly from small in-test plugin modules
(``make_plugin_manager(load_entrypoints=False, plugins=[...])``); only the last
tests look at the installed entry points.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pytest
import torch

from pactframe import Decomposer, MergedTensor, Merger, hookimpl, param
from pactframe.contracts import component_field
from pactframe.errors import (
    ContractError,
    DuplicateComponentError,
    InvalidParameterError,
    PluginError,
    UnknownComponentError,
)
from pactframe.plugins import BLOCK_ENV, blocked_from_env, make_plugin_manager
from pactframe.registry import build_registry, is_valid_name
from pactframe.types import Factorization, LayerBundle
from pactframe.validation import integer


# ------------------------------------------------------------------ test plugins
@attrs.frozen
class SumMerger(Merger):
    """Sum of the task vectors times ``scale`` (a test double)."""

    name: ClassVar[str] = "test_sum"
    scale: float = param(1.0, help="multiplier")

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        return MergedTensor(self.scale * torch.stack(bundle.task_vectors).sum(0))


@attrs.frozen
class OtherSumMerger(SumMerger):
    """A second class claiming the same name."""


@attrs.frozen
class TopKDecomposer(Decomposer):
    """Exact SVD truncated to ``default_rank`` (a test double)."""

    name: ClassVar[str] = "test_topk"
    default_rank: int = param(2, validator=integer(1))

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
        return Factorization(U, S, Vh).truncate(self.default_rank if rank is None else rank)


@attrs.frozen
class ProjectingMerger(Merger):
    """A merger holding a decomposer field (like PACT holds one)."""

    name: ClassVar[str] = "test_projecting"
    decomposer: Decomposer = component_field("decomposer", TopKDecomposer())
    weight: float = param(0.5)

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        total = torch.stack(bundle.task_vectors).sum(0)
        return MergedTensor(self.weight * self.decomposer.decompose(total).reconstruct())


def plugin(name: str, **hooks: Callable[[], Any]) -> types.ModuleType:
    """A plugin module called ``name`` implementing the given hooks."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def mergers_plugin(name: str, *classes: type) -> types.ModuleType:
    return plugin(name, pactframe_register_mergers=lambda: list(classes))


def registry_of(*plugins: object, block: list[str] | None = None):
    return build_registry(
        make_plugin_manager(load_entrypoints=False, plugins=plugins, block=block or [])
    )


# ------------------------------------------------------------------ discovery
def test_registry_finds_classes_from_each_hook_with_their_provider():
    reg = registry_of(
        mergers_plugin("alpha_plugin", SumMerger, ProjectingMerger),
        plugin("beta_plugin", pactframe_register_decomposers=lambda: [TopKDecomposer]),
    )
    assert reg.names("merger") == ["test_projecting", "test_sum"]
    assert reg.names("decomposer") == ["test_topk"]
    assert reg.names("preprocessor") == [] and reg.names("evaluator") == []
    assert reg.get("merger", "test_sum") is SumMerger
    assert reg.entry("decomposer", "test_topk").plugin == "beta_plugin"
    assert ("merger", "test_sum") in reg and ("decomposer", "test_sum") not in reg


def test_hook_returning_none_registers_nothing():
    reg = registry_of(plugin("quiet_plugin", pactframe_register_mergers=lambda: None))
    assert reg.names("merger") == []


def test_unknown_kind_is_a_plugin_error_listing_the_kinds():
    reg = registry_of()
    with pytest.raises(PluginError, match=r"Unknown component kind 'mergers'.*decomposer.*merger"):
        reg.names("mergers")


# ------------------------------------------------------------------ errors at build time
def test_duplicate_names_raise_naming_both_providers():
    with pytest.raises(DuplicateComponentError) as info:
        registry_of(
            mergers_plugin("alpha_plugin", SumMerger), mergers_plugin("beta_plugin", OtherSumMerger)
        )
    message = str(info.value)
    assert "'test_sum'" in message
    assert "alpha_plugin" in message and "beta_plugin" in message
    assert BLOCK_ENV in message  # says what to do


def test_duplicate_within_one_plugin_is_also_rejected():
    with pytest.raises(DuplicateComponentError, match="test_sum"):
        registry_of(mergers_plugin("alpha_plugin", SumMerger, OtherSumMerger))


def test_class_of_the_wrong_contract_is_rejected_naming_the_plugin():
    wrong = plugin("confused_plugin", pactframe_register_mergers=lambda: [TopKDecomposer])
    with pytest.raises(ContractError) as info:
        registry_of(wrong)
    message = str(info.value)
    assert "'confused_plugin'" in message
    assert "TopKDecomposer" in message and "pactframe.Merger" in message


def test_non_class_is_rejected_naming_the_plugin():
    wrong = plugin("instance_plugin", pactframe_register_mergers=lambda: [SumMerger()])
    with pytest.raises(
        ContractError, match=r"'instance_plugin'.*not a subclass of pactframe.Merger"
    ):
        registry_of(wrong)


def test_is_valid_name_accepts_snake_case_only():
    assert all(map(is_valid_name, ["ties", "task_arithmetic", "pave2", "a_"]))
    bad = ["Ties", "task-arithmetic", "2ties", "_ties", "", "ties\n", "ties ", None, 3, b"ties"]
    assert not any(map(is_valid_name, bad))


@pytest.mark.parametrize(
    "bad_name", ["TestSum", "test-sum", "1sum", "", None, "sum merger", "sum\n", "sum_\n"]
)
def test_name_that_is_not_snake_case_is_rejected(bad_name):
    @attrs.frozen
    class BadlyNamed(SumMerger):
        pass

    BadlyNamed.name = bad_name  # type: ignore[misc]
    with pytest.raises(ContractError) as info:
        registry_of(mergers_plugin("naming_plugin", BadlyNamed))
    assert "'naming_plugin'" in str(info.value)
    assert "snake_case" in str(info.value) and repr(bad_name) in str(info.value)


def test_abstract_class_is_rejected_naming_the_missing_method():
    class HalfMerger(Merger):
        name: ClassVar[str] = "half"

    with pytest.raises(ContractError) as info:
        registry_of(mergers_plugin("lazy_plugin", HalfMerger))
    assert "'lazy_plugin'" in str(info.value)
    assert "HalfMerger does not implement merge" in str(info.value)


@pytest.mark.parametrize("result", [SumMerger, "test_sum", {"test_sum": SumMerger}])
def test_hook_returning_a_non_list_is_rejected(result):
    with pytest.raises(ContractError) as info:
        registry_of(plugin("scalar_plugin", pactframe_register_mergers=lambda: result))
    message = str(info.value)
    assert "'scalar_plugin'" in message
    assert "pactframe_register_mergers() must return a list" in message
    assert type(result).__name__ in message


def test_misspelt_hookimpl_fails_at_check_pending():
    typo = plugin("typo_plugin", pactframe_register_merger=lambda: [SumMerger])
    with pytest.raises(PluginError) as info:
        make_plugin_manager(load_entrypoints=False, plugins=[typo])
    assert "pactframe_register_merger" in str(info.value)
    assert "typo_plugin" in str(info.value)
    assert "pactframe.hookspecs" in str(info.value)


# ------------------------------------------------------------------ blocking
def test_block_argument_blocks_a_plugin():
    alpha = mergers_plugin("alpha_plugin", SumMerger)
    beta = plugin("beta_plugin", pactframe_register_decomposers=lambda: [TopKDecomposer])
    reg = registry_of(alpha, beta, block=["alpha_plugin"])
    assert reg.names("merger") == []
    assert reg.names("decomposer") == ["test_topk"]


def test_block_resolves_a_duplicate():
    reg = registry_of(
        mergers_plugin("alpha_plugin", SumMerger),
        mergers_plugin("beta_plugin", OtherSumMerger),
        block=["alpha_plugin"],
    )
    assert reg.get("merger", "test_sum") is OtherSumMerger


def test_environment_variable_blocks_plugins(monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, " alpha_plugin ,,gamma_plugin")
    assert blocked_from_env() == ["alpha_plugin", "gamma_plugin"]
    pm = make_plugin_manager(
        load_entrypoints=False,
        plugins=[
            mergers_plugin("alpha_plugin", SumMerger),
            mergers_plugin("beta_plugin", ProjectingMerger),
        ],
    )
    assert build_registry(pm).names("merger") == ["test_projecting"]


def test_environment_variable_blocks_a_builtin_entry_point(monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "co_svd")
    names = build_registry().names("decomposer")
    assert "co_svd" not in names and "exact_svd" in names


def test_explicit_block_overrides_the_environment(monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "alpha_plugin")
    reg = registry_of(mergers_plugin("alpha_plugin", SumMerger), block=[])
    assert reg.names("merger") == ["test_sum"]


# ------------------------------------------------------------------ lookup and construction
def test_unknown_name_lists_registered_names_and_suggests_the_closest():
    reg = registry_of(mergers_plugin("alpha_plugin", SumMerger, ProjectingMerger))
    with pytest.raises(UnknownComponentError) as info:
        reg.get("merger", "test_summ")
    message = str(info.value)
    assert "No merger named 'test_summ'" in message
    assert "Did you mean 'test_sum'?" in message
    assert "Registered mergers: test_projecting, test_sum." in message
    assert "pactframe plugins" in message


def test_unknown_name_without_close_match_has_no_suggestion():
    reg = registry_of(mergers_plugin("alpha_plugin", SumMerger))
    with pytest.raises(UnknownComponentError) as info:
        reg.get("merger", "zzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "Registered mergers: test_sum." in str(info.value)


def test_unknown_name_in_an_empty_kind_says_none():
    with pytest.raises(UnknownComponentError, match=r"Registered evaluators: \(none\)"):
        registry_of().get("evaluator", "accuracy")


def test_create_passes_parameters():
    reg = registry_of(mergers_plugin("alpha_plugin", SumMerger))
    merger = reg.create("merger", "test_sum", scale=0.25)
    assert merger == SumMerger(scale=0.25)


def test_create_with_unknown_parameters_lists_the_known_ones():
    reg = registry_of(mergers_plugin("alpha_plugin", ProjectingMerger))
    with pytest.raises(InvalidParameterError) as info:
        reg.create("merger", "test_projecting", wieght=1.0, alpha=2)
    message = str(info.value)
    assert "unknown parameter(s) alpha, wieght" in message
    assert "Its parameters are: decomposer, weight." in message
    assert "alpha_plugin" in message


def test_create_reports_a_validator_failure_by_parameter():
    reg = registry_of(
        plugin("beta_plugin", pactframe_register_decomposers=lambda: [TopKDecomposer])
    )
    with pytest.raises(
        InvalidParameterError, match=r"'default_rank' parameter of TopKDecomposer .* Got 0"
    ):
        reg.create("decomposer", "test_topk", default_rank=0)


def test_nested_component_resolves_from_a_name():
    reg = registry_of(
        mergers_plugin("alpha_plugin", ProjectingMerger),
        plugin("beta_plugin", pactframe_register_decomposers=lambda: [TopKDecomposer]),
    )
    merger = reg.create("merger", "test_projecting", decomposer="test_topk")
    assert merger.decomposer == TopKDecomposer()


def test_nested_component_resolves_from_a_mapping():
    reg = registry_of(
        mergers_plugin("alpha_plugin", ProjectingMerger),
        plugin("beta_plugin", pactframe_register_decomposers=lambda: [TopKDecomposer]),
    )
    merger = reg.build(
        "merger",
        {
            "name": "test_projecting",
            "weight": 2.0,
            "decomposer": {"name": "test_topk", "default_rank": 1},
        },
    )
    assert merger == ProjectingMerger(decomposer=TopKDecomposer(default_rank=1), weight=2.0)
    # and the built component works: rank-1 truncation of the sum, times 2
    a = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    bundle = LayerBundle("w", torch.zeros(2, 2, dtype=torch.float64), [a], ["t"])
    expected = torch.tensor([[6.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(merger.merge(bundle).delta, expected)


def test_nested_component_with_an_unknown_name_fails_naming_the_kind():
    reg = registry_of(
        mergers_plugin("alpha_plugin", ProjectingMerger),
        plugin("beta_plugin", pactframe_register_decomposers=lambda: [TopKDecomposer]),
    )
    with pytest.raises(
        UnknownComponentError, match=r"No decomposer named 'test_topj'.*'test_topk'"
    ):
        reg.create("merger", "test_projecting", decomposer="test_topj")


def test_build_accepts_an_instance_of_the_right_kind_only():
    reg = registry_of(mergers_plugin("alpha_plugin", SumMerger))
    merger = SumMerger(scale=3.0)
    assert reg.build("merger", merger) is merger
    with pytest.raises(ContractError, match="Expected a decomposer, got the merger 'test_sum'"):
        reg.build("decomposer", merger)


@pytest.mark.parametrize("spec", [{"scale": 1.0}, 42, ["test_sum"]])
def test_build_rejects_malformed_specs(spec):
    reg = registry_of(mergers_plugin("alpha_plugin", SumMerger))
    with pytest.raises(InvalidParameterError, match="merger"):
        reg.build("merger", spec)


def test_entries_are_sorted_by_kind_then_name():
    reg = registry_of(
        mergers_plugin("alpha_plugin", SumMerger, ProjectingMerger),
        plugin("beta_plugin", pactframe_register_decomposers=lambda: [TopKDecomposer]),
    )
    assert [(e.kind, e.name) for e in reg.entries()] == [
        ("decomposer", "test_topk"),
        ("merger", "test_projecting"),
        ("merger", "test_sum"),
    ]


# ------------------------------------------------------------------ the installed built-ins
def test_builtin_registry_contains_the_three_decomposers(registry):
    names = registry.names("decomposer")
    for name in ("exact_svd", "randomized_svd", "co_svd"):
        assert name in names
        entry = registry.entry("decomposer", name)
        assert entry.plugin == name  # the entry-point name
        assert entry.distribution.startswith("pactframe ")


def test_builtins_come_only_from_entry_points():
    """With entry points off there is nothing: no hidden list of built-ins."""
    reg = build_registry(make_plugin_manager(load_entrypoints=False, block=[]))
    assert all(
        reg.names(kind) == [] for kind in ("decomposer", "preprocessor", "merger", "evaluator")
    )
