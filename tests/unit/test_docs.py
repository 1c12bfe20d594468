"""The documentation checks of docs/check_docs.py (the tox ``docs`` env), one test
each, plus tests that the checker itself catches what it should (datasette style:
every page linked, every link alive, every component and every hook documented)."""

from __future__ import annotations

import types
from typing import ClassVar

import attrs
import pytest

from pactframe import MergedTensor, Merger, hookimpl
from pactframe.plugins import make_plugin_manager
from pactframe.registry import Registry
from tests._scripts import load_script


@pytest.fixture(scope="module")
def check_docs():
    return load_script("docs/check_docs.py", "check_docs")


def test_every_docs_page_is_linked_from_the_index(check_docs):
    assert check_docs.unlinked_pages() == []


def test_no_relative_link_is_broken(check_docs):
    assert check_docs.broken_links() == []


def test_every_registered_component_is_named_in_the_docs(check_docs):
    assert check_docs.undocumented_components() == []


def test_every_hook_is_named_in_the_docs(check_docs):
    assert check_docs.undocumented_hooks() == []


def test_every_hookspec_is_checked(check_docs):
    from pactframe.hookspecs import HOOK_FOR_KIND

    assert set(HOOK_FOR_KIND.values()) | {"pactframe_register_commands"} <= set(check_docs.hooks())


def test_the_core_pages_exist(check_docs):
    names = {p.name for p in check_docs.pages()}
    assert {"index.md", "concepts.md", "plugin-guide.md", "decomposers.md"} <= names


# ------------------------------------------------------------------ the checker itself
def test_links_are_found_outside_code_only(check_docs, tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        'See [a](a.md), ![img](img/plot.png "title") and [ext](https://example.org).\n'
        "[ref]: other.md#section\n"
        "Inline `[not](code.md)` and\n```\n[neither](fenced.md)\n```\n",
        encoding="utf-8",
    )
    assert sorted(check_docs.links(page)) == sorted(
        ["a.md", "img/plot.png", "https://example.org", "other.md#section"]
    )


def test_broken_links_are_reported_and_anchors_ignored(check_docs, tmp_path, monkeypatch):
    monkeypatch.setattr(check_docs, "ROOT", tmp_path)
    (tmp_path / "here.md").write_text("x", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](here.md#part) [gone](missing.md) [anchor](#top) [web](http://x.org/y.md)",
        encoding="utf-8",
    )
    assert check_docs.broken_links([page]) == ["page.md: broken link to 'missing.md'"]


def test_unlinked_pages_are_reported(check_docs, tmp_path, monkeypatch):
    (tmp_path / "index.md").write_text("- [One](one.md)\n", encoding="utf-8")
    (tmp_path / "one.md").write_text("one", encoding="utf-8")
    (tmp_path / "two.md").write_text("two", encoding="utf-8")
    monkeypatch.setattr(check_docs, "DOCS", tmp_path)
    monkeypatch.setattr(check_docs, "ROOT", tmp_path)
    monkeypatch.setattr(check_docs, "INDEX", tmp_path / "index.md")
    assert check_docs.unlinked_pages() == ["two.md is not linked from docs/index.md"]


def test_names_match_whole_words_only(check_docs):
    assert check_docs._mentioned("ties", "we use `ties` here")
    assert check_docs._mentioned("iso_c", "iso_c, then")
    assert not check_docs._mentioned("iso_c", "only iso_cts here")
    assert not check_docs._mentioned("pact", "pact_tsv_m and impact")


def test_plugin_guide_example_is_the_fixture(check_docs):
    """The worked example in docs/plugin-guide.md is the installed-and-tested fixture, verbatim."""
    guide = (check_docs.DOCS / "plugin-guide.md").read_text(encoding="utf-8")
    fixture = check_docs.ROOT / "tests" / "fixtures" / "thirdparty_plugin"
    module = (fixture / "pactframe_example_median.py").read_text(encoding="utf-8")
    assert f"```python\n{module}```" in guide
    pyproject = (fixture / "pyproject.toml").read_text(encoding="utf-8")
    build_onwards = pyproject[pyproject.index("[build-system]") :]
    assert f"```toml\n{build_onwards}```" in guide


@attrs.frozen
class _UndocumentedMerger(Merger):
    name: ClassVar[str] = "zz_undocumented_merger"

    def merge(self, bundle, state=None):
        return MergedTensor(sum(bundle.task_vectors))


def _third_party_registry() -> Registry:
    """The installed entry points plus a plugin object with a merger no page names."""
    plugin = types.ModuleType("zz_third_party")

    @hookimpl
    def pactframe_register_mergers():
        return [_UndocumentedMerger]

    plugin.pactframe_register_mergers = pactframe_register_mergers  # type: ignore[attr-defined]
    return Registry.from_plugin_manager(make_plugin_manager(plugins=[plugin]))


def test_a_third_party_component_leaves_the_docs_checks_green(check_docs):
    registry = _third_party_registry()
    assert "zz_undocumented_merger" in registry.names("merger")
    assert check_docs.undocumented_components(registry) == []
    own = {e.name for e in check_docs.own_entries(registry)}
    assert "zz_undocumented_merger" not in own and {"ties", "pact", "accuracy"} <= own


def test_an_undocumented_builtin_is_still_reported(check_docs, monkeypatch):
    text = check_docs._docs_text()
    monkeypatch.setattr(check_docs, "_docs_text", lambda: text.replace("ties", "t-i-e-s"))
    problems = check_docs.undocumented_components(_third_party_registry())
    assert len(problems) == 1 and "the merger 'ties'" in problems[0]


def test_no_own_component_at_all_is_a_problem(check_docs):
    empty = Registry.from_plugin_manager(make_plugin_manager(load_entrypoints=False))
    assert check_docs.undocumented_components(empty) == [
        "no component of the 'pactframe' distribution is registered: install it"
    ]
