"""The core stands alone: ``pactframe/`` neither imports the built-in plugins
(``pactframe_plugins``) nor the benchmark (``pactframe_bench``), which reach it
only through entry points, and its modules import each other without cycles.

Imports are read with :mod:`ast`, function-level and ``TYPE_CHECKING`` ones
included: a cycle hidden in a function is still two modules that need each other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "pactframe"
OUTSIDE = ("pactframe_plugins", "pactframe_bench")

# Import edges allowed to close a cycle among the core's modules (none: the core
# imports one way). An entry names one edge; the test fails when a cycle appears that
# these do not explain, and when an entry is no longer needed (then delete it here).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_files(package: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_names(path: Path, module: str) -> set[str]:
    """Every name ``path`` imports (absolute, relative resolved), at any depth.

    ``from pkg import name`` yields ``pkg.name`` (a module or an attribute of
    ``pkg``: :func:`import_graph` walks up to the deepest module it knows).
    """
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}``.

    An import of ``a.b.c`` counts as an edge to the deepest known module among
    ``a.b.c``, ``a.b``, ``a``; the parent packages Python imports implicitly on
    the way are not edges (every module would otherwise cycle with its package).
    """
    files = module_files(package)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges = set()
        for name in imported_names(path, module):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# ------------------------------------------------------------------ the core alone
def test_importing_the_core_loads_no_plugin_or_bench_module():
    code = textwrap.dedent(
        """
        import sys
        import pactframe, pactframe.pipeline, pactframe.api, pactframe.cli
        print("\\n".join(sorted(sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "pactframe.pipeline" in loaded and "pactframe.api" in loaded
    leaked = [m for m in loaded if m.split(".")[0] in OUTSIDE]
    assert leaked == [], f"importing the core loaded {leaked}"


def test_no_core_module_imports_the_plugins_or_the_bench():
    offenders = {
        module: sorted(n for n in imported_names(path, module) if n.split(".")[0] in OUTSIDE)
        for module, path in module_files(CORE).items()
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def test_the_core_modules_import_each_other_without_new_cycles():
    graph = import_graph(CORE)
    for source, target in KNOWN_CYCLE_EDGES:
        assert target in graph[source], (
            f"{source} no longer imports {target}: remove the edge from KNOWN_CYCLE_EDGES"
        )
        assert source in {m for c in cycles(graph) for m in c}, (
            f"{source} -> {target} closes no cycle any more: remove it from KNOWN_CYCLE_EDGES"
        )
    pruned = {m: e - {t for s, t in KNOWN_CYCLE_EDGES if s == m} for m, e in graph.items()}
    assert cycles(pruned) == []


# ------------------------------------------------------------------ the checker itself
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "pkg"


def test_import_graph_sees_function_level_relative_and_type_checking_imports(tmp_path):
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg import a\n",
            "pkg/a.py": "import pkg.b\nimport os\n",
            "pkg/b.py": "def f():\n    from .sub import c\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import thing\n"
            ),
            "pkg/d.py": "import importlib\nimportlib.import_module('pkg.a')\n",
            "pkg/e.py": "from pkg import VERSION, d\n",
        },
    )
    graph = import_graph(package)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a"},
        "pkg.d": {"pkg.a"},
        "pkg.e": {"pkg", "pkg.d"},
    }
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_cycles_hand_examples():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"c"}}) == [["a", "b"]]
    two = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "a"}}
    assert cycles(two) == [["a", "b"], ["c", "d", "e"]]
