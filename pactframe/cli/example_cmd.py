"""``pactframe example DIR``: a small generated example to merge right away."""

from __future__ import annotations

import argparse

help = "write a small generated example (base, 3 fine-tunes, covariances, config.yaml) to DIR"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="folder to create")
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from pactframe.cli._output import prepare_output
    from pactframe.example import write_example

    prepare_output("example", args.dir)
    config = write_example(args.dir, force=args.force, seed=args.seed)
    print(
        f"wrote an example to {args.dir}; now run:\n  pactframe validate {config}\n"
        f"  pactframe merge {config} {args.dir}/merged"
    )
    return 0
