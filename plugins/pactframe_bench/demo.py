"""``pactframe demo``: vision-small end to end through the real pipeline on files.

1. Build (or reuse from the cache) vision-small: pre-trained base, 8 fine-tuned
   MLPs, frozen prototype heads, PAVE covariances.
2. Write base, fine-tuned checkpoints and covariance files under ``OUT/models``.
3. Per method: choose its hyperparameters on the VALIDATION split (in-memory
   merges through the same pipeline), then merge the files on disk with
   :func:`pactframe.api.merge` into ``OUT/merged/<method>`` (timed), read the
   merged checkpoint back and measure TEST accuracy with the ``accuracy``
   evaluator.
4. Print the table, write ``OUT/results.json``, ``OUT/table.md`` and ``OUT/plot.png``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pactframe.registry import build_registry
from pactframe_bench.cache import write_json
from pactframe_bench.compare import load_covariances, tune_method
from pactframe_bench.files import load_merged, merge_files, to_float, write_models
from pactframe_bench.report import markdown_table, plot, summarize
from pactframe_bench.runner import select_methods


def run_demo(
    out: Path,
    method_names: Sequence[str],
    *,
    seed: int = 0,
    suite_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo; returns the results (the same data as ``OUT/results.json``)."""
    from pactframe_bench.vision_small import VisionSmall

    start = time.perf_counter()
    methods = select_methods(method_names)
    registry = build_registry()
    suite = VisionSmall(seed=seed, log=log, **(suite_options or {}))
    log(f"[1/4] building vision-small (cached in {suite.folder.parent})")
    suite.build()
    log(
        f"[2/4] writing base, {len(suite.task_names)} fine-tuned models and covariances to "
        f"{out / 'models'}"
    )
    models_config = write_models(suite, out / "models")
    models = {t: suite.finetuned_state(t) for t in suite.task_names}
    covariances = load_covariances(suite)
    results: dict[str, Any] = {
        "zero_shot": suite.evaluate(suite.base_state(), "test"),
        "individual": suite.individual_accuracy("test"),
        "rows": {},
    }
    log(f"[3/4] merging with {len(methods)} methods (hyperparameters chosen on validation)")
    for i, method in enumerate(methods):
        tuned = tune_method(suite, method, models, covariances, registry)
        log(
            f"  ({i + 1}/{len(methods)}) {method.name}: chosen on validation "
            f"{tuned.chosen or '(defaults)'}"
        )
        merged_dir = out / "merged" / method.name.replace("+", "_")
        _, seconds = merge_files(
            models_config, tuned.config, merged_dir, uses_covariances=method.needs_covariances
        )
        merged = load_merged(merged_dir, suite.task_names, Path(models_config["base"]))
        state: Any = (
            {t: to_float(s) for t, s in merged.items() if isinstance(s, dict)}
            if any(isinstance(s, dict) for s in merged.values())
            else to_float(merged)  # type: ignore[arg-type]
        )
        test = suite.evaluate(state, "test")
        log(
            f"      merged on files in {seconds:.2f} s -> {merged_dir}; "
            f"test accuracy {100 * test['mean_accuracy']:.1f}%"
        )
        results["rows"][method.name] = {
            "method": method.name,
            "chosen": tuned.chosen,
            "config": tuned.config,
            "validation_score": tuned.validation_score,
            "test": test,
            "merge_seconds": seconds,
            "merged_dir": str(merged_dir),
        }
    log("[4/4] results")
    rows = summarize([results], [m.name for m in methods])
    table = markdown_table(rows, 1)
    write_json(out / "results.json", results)
    (out / "table.md").write_text(table)
    png = plot(rows, out / "plot.png", f"vision-small, T = {len(suite.task_names)}, seed {seed}")
    log(table)
    log(
        f"outputs: {out / 'table.md'}, {png}, {out / 'results.json'}, merged models in "
        f"{out / 'merged'} (total {time.perf_counter() - start:.0f} s)"
    )
    return results
