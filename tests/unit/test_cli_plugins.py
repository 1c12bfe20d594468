"""``pactframe plugins``: every registered component by kind, with its provider,
parameters and defaults (text and ``--json``); ``python -m pactframe`` works.

Expected defaults are the documented ones (docs/decomposers.md, docs/pact.md,
docs/pave.md: oversampling p = 10, 2 power iterations then an adaptive stop at
1e-3 energy growth (budget auto: 8 for small ranks), CorDA damping 0.01 relative,
tolerance 0.05), not read back from the classes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pactframe
from pactframe.cli import main
from pactframe.errors import DuplicateComponentError

DOCUMENTED = {
    "exact_svd": {},
    "randomized_svd": {
        "oversampling": 10,
        "power_iterations": 2,
        "tolerance": 1e-3,
        "max_power_iterations": None,
        "seed": 0,
    },
    "co_svd": {
        "damping": 0.01,
        "damping_mode": "relative",
        "tolerance": 0.05,
        "damping_check": "strict",
    },
}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_lists_each_decomposer_with_parameters_and_defaults(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    data = json.loads(out)
    assert sorted(data) == ["decomposer", "evaluator", "executor", "merger", "preprocessor"]
    decomposers = {e["name"]: e for e in data["decomposer"]}
    for name, defaults in DOCUMENTED.items():
        entry = decomposers[name]
        assert entry["provider"] == f"{name} (pactframe {pactframe.__version__})"
        assert {p["name"]: p["default"] for p in entry["parameters"]} == defaults
        assert all(p["help"] for p in entry["parameters"]), f"{name}: a parameter lacks help"
    assert decomposers["randomized_svd"]["class"] == (
        "pactframe_plugins.decomposers.randomized_svd.RandomizedSVD"
    )
    # every kind's list is sorted by name (a person reads it)
    for entries in data.values():
        names = [e["name"] for e in entries]
        assert names == sorted(names)


def test_text_lists_each_decomposer_with_provider_and_defaults(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--kind", "decomposer")
    assert code == 0
    lines = out.splitlines()
    header = lines[0]
    assert header.startswith("decomposers (") and header.endswith("):")
    for name, defaults in DOCUMENTED.items():
        row = next(i for i, line in enumerate(lines) if line.startswith(f"  {name}  ["))
        assert f"[{name} (pactframe {pactframe.__version__})]" in lines[row]
        shown = [line.strip() for line in lines[row + 1 : row + 1 + len(defaults)]]
        for (param, default), line in zip(defaults.items(), shown):
            assert line.startswith(f"{param} = {default!r}"), line
    assert "mergers (" not in out  # --kind filters


def test_every_kind_has_a_section(capsys):
    _, out, _ = run_cli(capsys, "plugins")
    for kind in ("decomposers", "preprocessors", "mergers", "evaluators"):
        assert f"\n{kind} (" in "\n" + out


def test_blocked_plugin_disappears_from_the_listing(capsys, monkeypatch):
    monkeypatch.setenv("PACTFRAME_BLOCK_PLUGINS", "randomized_svd")
    _, out, _ = run_cli(capsys, "plugins", "--kind", "decomposer", "--json")
    names = [e["name"] for e in json.loads(out)["decomposer"]]
    assert "randomized_svd" not in names and "exact_svd" in names


def test_a_pactframe_error_is_reported_on_stderr_with_exit_code_1(capsys, monkeypatch):
    def broken_registry():
        raise DuplicateComponentError("Two plugins register a merger named 'ties': a and b.")

    monkeypatch.setattr("pactframe.registry.build_registry", broken_registry)
    code, out, err = run_cli(capsys, "plugins")
    assert code == 1 and out == ""
    assert err.strip() == (
        "pactframe plugins: error: Two plugins register a merger named 'ties': a and b."
    )


def test_no_command_prints_help_and_returns_2(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2
    assert "usage: pactframe" in out and "plugins" in out


def test_unknown_kind_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plugins", "--kind", "mergers"])
    assert info.value.code == 2
    assert "invalid choice: 'mergers'" in capsys.readouterr().err


def test_python_dash_m_pactframe_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "pactframe", "plugins", "--kind", "decomposer", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    names = [e["name"] for e in json.loads(result.stdout)["decomposer"]]
    assert {"exact_svd", "randomized_svd", "co_svd"} <= set(names)
    version = subprocess.run(
        [sys.executable, "-m", "pactframe", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.returncode == 0
    assert version.stdout.strip() == f"pactframe {pactframe.__version__}"
