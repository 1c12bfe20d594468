"""``pactframe merge CONFIG OUT``: run a merge from a YAML config (like ``mergekit-yaml``)."""

from __future__ import annotations

import argparse
import sys

help = "merge the checkpoints a YAML config names into the folder OUT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the merge config (YAML)")
    parser.add_argument("out", help="output folder (written atomically)")
    parser.add_argument("--device", help="override the config's device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_executor_arguments(parser)


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor NAME --workers N`` (merge and validate)."""
    parser.add_argument(
        "--executor",
        metavar="NAME",
        help="override the config's executor: local, processes, ray or a plugin's "
        "(docs/executors.md)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="workers of the executor (alone: the 'processes' executor with N workers)",
    )


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, job schedulers) into KeyboardInterrupt, so an
    interrupted merge removes its temporary folder as it does on Ctrl-C (for scripts
    calling the API; the CLI's :func:`pactframe.cli.main` handles SIGINT, SIGTERM
    and SIGHUP itself)."""
    import signal

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pactframe.api import with_executor
    from pactframe.cli._output import prepare_output
    from pactframe.config import load_config
    from pactframe.io.units import format_bytes
    from pactframe.io.writer import check_destination
    from pactframe.output_safety import merge_inputs
    from pactframe.pipeline import MergePipeline

    spec = with_executor(load_config(args.config), args.executor, args.workers)
    inputs, protected = merge_inputs(spec)
    prepare_output("merge", args.out, inputs, protected)  # never over an input, --force or not
    check_destination(Path(args.out), force=args.force)  # fail before planning work
    pipeline = MergePipeline(spec, device=args.device)
    report = pipeline.run(args.out, force=args.force, progress=not args.quiet)
    s = report["summary"]
    t = report["timings"]
    handled = ", ".join(f"{k}: {v}" for k, v in s["handled_by"].items())
    print(
        f"merged {s['tensors']} tensors ({handled}) into {args.out} "
        f"[{format_bytes(s['output_bytes'])}, {len(s['shards'])} shard(s)] in "
        f"{t.get('total_s', 0):.1f} s on {report['device']} ({_executor_text(report)}); "
        "peak RSS "
        f"{format_bytes(report['memory']['peak_rss_bytes'])}",
        file=sys.stdout,
    )
    if s["task_modulators"]:
        print(
            f"task-conditioned merge: `pactframe materialize {args.out} --task NAME DEST` writes "
            f"one task's model (tasks: {', '.join(report['tasks'])})"
        )
    for note in report.get("notes", []):
        print(f"note: {note}")
    print(f"report: {args.out}/merge_report.json, model card: {args.out}/README.md")
    return 0


def _executor_text(report: dict) -> str:
    ex = report.get("executor") or {}
    workers = ex.get("config", {}).get("workers")
    return f"executor {ex.get('name', 'local')}" + (f" x{workers}" if workers else "")
