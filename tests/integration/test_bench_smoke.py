"""CI smoke test: a reduced vision-small end to end through the pipeline on files.

Needs the ``bench`` extra (mlxtend, scikit-learn, matplotlib). Without them the
suite raises an error naming what to install: the test fails, it never skips.
"""

from __future__ import annotations

import json

from pactframe_bench.demo import run_demo

REDUCED = {
    "recipe": {"pretrain_epochs": 1, "finetune_steps": 15, "covariance_examples": 128},
    "tasks": ("rot90", "invert", "digits_mod3"),
}
METHODS = ["task_arithmetic", "emr", "tsv_m", "pact+tsv_m", "pave+task_arithmetic"]


def test_reduced_vision_small_merges_through_the_pipeline(tmp_path):
    logs: list[str] = []
    results = run_demo(
        tmp_path / "out", METHODS, suite_options={**REDUCED, "root": tmp_path / "cache"},
        log=logs.append,
    )
    assert set(results["rows"]) == set(METHODS)
    for method, row in results["rows"].items():
        merged = tmp_path / "out" / "merged" / method.replace("+", "_")
        assert (merged / "merge_report.json").is_file(), method
        assert row["merge_seconds"] > 0
        tasks = row["test"]["tasks"]
        assert set(tasks) == set(REDUCED["tasks"]), method
        for task, data in tasks.items():
            assert 0.0 <= data["accuracy"] <= 1.0, (method, task)
            assert data["total"] > 0 and data["normalized_accuracy"] is not None
    emr_dir = tmp_path / "out" / "merged" / "emr"
    assert (emr_dir / "task_modulators.safetensors").is_file()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["rows"]) == set(METHODS)
    assert (tmp_path / "out" / "plot.png").stat().st_size > 0
    assert "test accuracy" in (tmp_path / "out" / "table.md").read_text()
