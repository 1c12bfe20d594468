"""The third-party proof: a separate distribution (tests/fixtures/thirdparty_plugin,
its own pyproject and one Merger registered through the ``pactframe`` entry-point
group) is installed into the running interpreter, appears in ``pactframe
plugins``, is built by name from a fresh registry and merges a bundle, and is
uninstalled again.

The fixture is copied to a temporary folder first, so no build files land in
the repository. The install takes a few seconds (a wheel is built offline with
the interpreter's own setuptools: ``--no-deps --no-build-isolation``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pactframe import build_registry
from pactframe.cli import main
from pactframe.testing import check_component
from pactframe.types import LayerBundle
from tests._scripts import load_script

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "thirdparty_plugin"
DISTRIBUTION = "pactframe-example-median"
MODULE = "pactframe_example_median"


def load_check_docs():
    return load_script("docs/check_docs.py", "check_docs")


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def listed_mergers() -> dict[str, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "pactframe", "plugins", "--kind", "merger", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {e["name"]: e for e in json.loads(out.stdout)["merger"]}


def test_thirdparty_plugin_installs_lists_builds_merges_and_uninstalls(tmp_path, capsys):
    assert "task_median" not in build_registry().names("merger"), "already installed"
    source = tmp_path / "thirdparty_plugin"
    shutil.copytree(FIXTURE, source)
    installed = pip("install", "--no-deps", "--no-build-isolation", str(source))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    try:
        # 1. a fresh process lists it in `pactframe plugins --json`
        entry = listed_mergers()["task_median"]
        assert entry["provider"] == f"example_median ({DISTRIBUTION} 0.1.0)"
        assert entry["class"] == f"{MODULE}.TaskMedianMerger"
        assert entry["parameters"] == [
            {"name": "scale", "default": 1.0, "type": "float", "help": "multiplier of the median"}
        ]

        # 2. and so does this one, in the text listing, once import caches are refreshed
        importlib.invalidate_caches()
        assert main(["plugins", "--kind", "merger"]) == 0
        text = capsys.readouterr().out
        assert "task_median  [example_median (pactframe-example-median 0.1.0)]" in text
        assert "scale = 1.0  -- multiplier of the median" in text

        # 3. a fresh registry builds it by name; it passes the contract checks and merges
        merger = build_registry().create("merger", "task_median", scale=0.5)
        check_component(merger)
        rng = np.random.default_rng(0)
        deltas = rng.standard_normal((4, 5, 3))
        bundle = LayerBundle(
            name="blocks.0.mlp.weight",
            base=torch.zeros(5, 3, dtype=torch.float64),
            task_vectors=[torch.from_numpy(d) for d in deltas],
            task_names=["a", "b", "c", "d"],
        )
        merged = merger.merge(bundle)
        assert np.allclose(merged.delta.numpy(), 0.5 * np.median(deltas, axis=0), atol=1e-15)

        # 4. the project's own docs checks stay green: they cover pactframe's components only
        check_docs = load_check_docs()
        assert "task_median" not in {e.name for e in check_docs.own_entries()}
        assert "ties" in {e.name for e in check_docs.own_entries()}
        assert check_docs.main() == 0
    finally:
        removed = pip("uninstall", "--yes", DISTRIBUTION)
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "task_median" not in build_registry().names("merger")
