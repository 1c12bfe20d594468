"""``pactframe demo``: build (or reuse) vision-small and merge it through the pipeline on files."""

from __future__ import annotations

import argparse

name = "demo"
help = (
    "the main job: build (or reuse) the vision-small benchmark, merge it with seven methods "
    "through the pipeline on files, print the table and write a plot"
)

DEMO_METHODS = (
    "task_arithmetic", "ties", "emr", "tsv_m", "iso_c", "pact+tsv_m", "pave+task_arithmetic",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: demo/ under the benchmark cache, $PACTFRAME_CACHE or "
        "~/.cache/pactframe/bench)",
    )
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed (default 0)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEMO_METHODS),
        help=f"methods to run (default: {' '.join(DEMO_METHODS)})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the models are small, and extra threads only "
        "contend on a busy machine)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from pactframe_bench.cache import cache_root
    from pactframe_bench.demo import run_demo

    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else cache_root() / "demo"
    run_demo(out, args.methods, seed=args.seed, log=lambda m: print(m, flush=True))
    return 0
