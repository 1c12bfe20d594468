"""``pactframe validate CONFIG``: the dry run (plan, memory estimate, every problem)."""

from __future__ import annotations

import argparse
import sys

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
    from pathlib import Path

    from pactframe.config import analyse_config, read_yaml
    from pactframe.plan import check_sources, make_plan
    from pactframe.sources import Sources

    found = analyse_config(
        read_yaml(config_path), base_dir=Path(config_path).parent, source=Path(config_path)
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
    if found.base is None or not found.models:
        return None, problems
    paths_ok = (
        found.base.exists()
        and all(m.path.exists() for m in found.models)
        and all(m.covariance is None or m.covariance.exists() for m in found.models)
    )
    if not paths_ok:
        return None, problems
    sources, open_problems = Sources.open(found.base, found.models)
    problems += open_problems
    if sources is None:
        return None, problems
    if found.spec is None:
        problems += check_sources([m.name for m in found.models], sources)
        return None, problems
    plan, plan_problems = make_plan(found.spec, sources)
    return plan, problems + plan_problems


def run(args: argparse.Namespace) -> int:
    plan, problems = collect(args.config, args.executor, args.workers)
    if plan is not None:
        text = plan.describe()  # type: ignore[attr-defined]
        print("\n".join(text.splitlines()[:3]) if args.quiet else text)
    if problems:
        print(f"{len(problems)} problem(s) in {args.config}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK, ready to merge")
    return 0
