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

    from pactframe.checkpoint import check_destination, format_bytes
    from pactframe.cli._output import prepare_output
    from pactframe.config import load_config
    from pactframe.output_safety import merge_inputs
    from pactframe.pipeline import MergePipeline

    spec = load_config(args.config)
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
        f"{t.get('total_s', 0):.1f} s on {report['device']}; peak RSS "
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
