"""``pactframe validate CONFIG``: the dry run (plan, memory estimate, every problem)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import attrs

help = "check a merge config and the checkpoint headers without merging; print the plan"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the merge config (YAML)")
    parser.add_argument("--quiet", action="store_true", help="only the summary, not every tensor")
    from pactframe.cli.merge_cmd import add_executor_arguments

    add_executor_arguments(parser)


def collect(
    config_path: str, executor: str | None = None, workers: int | None = None
) -> tuple[object | None, list[str]]:
    """``(plan or None, every problem)``: config problems, the executor's settings, then
    file/header problems (checked even when the recipe part of the config is wrong)."""
    plan, problems, _ = analyse(config_path, executor, workers)
    return plan, problems


def fallback_notes(spec: Any) -> list[str]:
    """Which merger takes the tensors that are not matrices, when it is not the
    top-level ``fallback``: the SVD mergers (tsv_m, iso_c, iso_cts) take them
    themselves, with their own ``fallback`` field (docs/config.md)."""
    from pactframe.contracts import Merger

    notes = []
    for recipe in spec.recipes():
        own = getattr(recipe.merger, "fallback", None)
        if isinstance(own, Merger):
            where = "" if recipe.label == "default" else f" ({recipe.label})"
            note = (
                f"note: {recipe.merger.name}{where} merges the tensors that are not matrices "
                f"(norms, biases) itself, with its own fallback {own.name!r} times its "
                "scaling; the top-level fallback takes only tensors a merger refuses or a "
                "rule excludes."
            )
            if note not in notes:
                notes.append(note)
    return notes


def analyse(
    config_path: str, executor: str | None = None, workers: int | None = None
) -> tuple[object | None, list[str], list[str]]:
    """``(plan or None, every problem, notes)`` (see :func:`collect`)."""
    from pathlib import Path

    from pactframe.config import analyse_config, read_config_data
    from pactframe.plan import check_sources, make_plan
    from pactframe.sources import Sources

    found = analyse_config(
        read_config_data(config_path)[0],
        base_dir=Path(config_path).parent,
        source=Path(config_path),
    )
    problems = list(found.problems)
    if found.spec is not None:
        from pactframe.api import with_executor
        from pactframe.errors import PactframeError

        try:
            spec = with_executor(found.spec, executor, workers)
            found = attrs.evolve(found, spec=spec)
            if spec.executor is not None:  # before any tensor is read
                problems += [f"executor {spec.executor.name!r}: {p}" for p in spec.executor.check()]
        except PactframeError as exc:
            problems.append(f"executor: {exc}")
    notes = fallback_notes(found.spec) if found.spec is not None else []
    if found.base is None or not found.models:
        return None, problems, notes
    paths_ok = (
        found.base.exists()
        and all(m.path.exists() for m in found.models)
        and all(m.covariance is None or m.covariance.exists() for m in found.models)
    )
    if not paths_ok:
        return None, problems, notes
    copy_files = found.spec.output.copy_files if found.spec is not None else True
    sources, open_problems = Sources.open(found.base, found.models, copy_files=copy_files)
    problems += open_problems
    if sources is None:
        return None, problems, notes
    if found.spec is None:
        problems += check_sources([m.name for m in found.models], sources)
        return None, problems, notes
    from pactframe.vocab import apply_vocab

    sources = apply_vocab(found.spec, sources)[0]
    plan, plan_problems = make_plan(found.spec, sources)
    return plan, problems + plan_problems, notes


def run(args: argparse.Namespace) -> int:
    from pactframe.config import format_problems

    plan, problems, notes = analyse(args.config, args.executor, args.workers)
    if plan is not None:
        text = plan.describe()  # type: ignore[attr-defined]
        print("\n".join(text.splitlines()[:3]) if args.quiet else text)
    for note in notes:
        print(note)
    if problems:
        print(f"{len(problems)} problem(s) in {args.config}:", file=sys.stderr)
        print(format_problems(problems), file=sys.stderr)
        return 1
    print(f"{args.config}: OK, ready to merge")
    return 0
