"""``pactframe validate CONFIG``: the dry run (plan, memory estimate, every problem)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

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
    """``(plan or None, every problem, notes)``: :func:`pactframe.api.check`, plus the
    notes on which merger takes the tensors that are not matrices."""
    from pactframe.api import check

    found = check(config_path, executor=executor, workers=workers)
    notes = fallback_notes(found.spec) if found.spec is not None else []
    return found.plan, list(found.problems), notes


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
