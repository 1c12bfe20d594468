"""``pactframe materialize MERGED --task NAME DEST``: one task's model from a
task-conditioned (EMR-style) merge."""

from __future__ import annotations

import argparse

help = "write one task's full checkpoint from a task-conditioned merge (e.g. emr)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("merged", help="the output folder of a task-conditioned merge")
    parser.add_argument("--task", required=True, help="the task to materialise")
    parser.add_argument("dest", help="output folder for that task's model")
    parser.add_argument("--base", help="the base model (default: the one in merge_report.json)")
    parser.add_argument("--force", action="store_true", help="replace DEST if it exists")


def run(args: argparse.Namespace) -> int:
    from pactframe.cli._output import prepare_output
    from pactframe.modulators import materialize

    inputs = [("the merged model", args.merged)]
    if args.base:
        inputs.append(("the base model", args.base))
    prepare_output("materialize", args.dest, inputs)
    out = materialize(args.merged, args.task, args.dest, base=args.base, force=args.force)
    print(f"wrote task {args.task!r} to {out}")
    return 0
