"""Run a suite over seeds: build (or reuse) the models, compare methods, write the report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pactframe.errors import InputError
from pactframe_bench.cache import cache_root, read_json, recipe_key
from pactframe_bench.compare import compare
from pactframe_bench.methods import Method, standard_methods
from pactframe_bench.report import markdown_table, plot, summarize

SUITES = ("vision-small", "text")


def make_suite(name: str, seed: int, log: Callable[[str], None], **options: Any) -> Any:
    if name == "vision-small":
        from pactframe_bench.vision_small import VisionSmall

        return VisionSmall(seed=seed, log=log, **options)
    if name == "text":
        from pactframe_bench.text import TextSuite

        return TextSuite(seed=seed, log=log, **options)
    raise InputError(f"Unknown benchmark suite {name!r}; choose one of {list(SUITES)}.")


def select_methods(
    names: Sequence[str] | None, methods: Sequence[Method] | None = None
) -> list[Method]:
    methods = list(methods or standard_methods())
    if not names:
        return methods
    known = {m.name: m for m in methods}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"Unknown method(s) {unknown}; the comparison has {list(known)}.")
    return [known[n] for n in names]


def run_suite(
    name: str,
    seeds: Sequence[int],
    out: Path,
    methods: Sequence[Method],
    log: Callable[[str], None] = print,
    **options: Any,
) -> list[dict[str, Any]]:
    """Build and compare every seed (resumable), then write ``table.md`` and ``plot.png``."""
    results = []
    for seed in seeds:
        start = time.perf_counter()
        suite = make_suite(name, seed, log, **options)
        log(f"[{name} seed {seed}] building (cache: {suite.folder})")
        suite.build()
        log(f"[{name} seed {seed}] comparing {len(methods)} methods")
        results_file = (
            suite.folder / f"results-{recipe_key({'m': [repr(m) for m in methods]})}.json"
        )
        compare(suite, methods, results_file, log=log)
        results.append(read_json(results_file))
        log(f"[{name} seed {seed}] done in {time.perf_counter() - start:.0f} s -> {results_file}")
    rows = summarize(results, [m.name for m in methods])
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, len(results))
    (out / "table.md").write_text(table)
    plot(
        rows,
        out / "plot.png",
        f"{name}, T = {len(results[0]['individual'])}, {len(results)} seed(s)",
    )
    log(table)
    log(f"wrote {out / 'table.md'} and {out / 'plot.png'} (cache under {cache_root()})")
    return rows
