"""``pactframe bench SUITE``: the merging benchmark (vision-small or text) over seeds."""

from __future__ import annotations

import argparse

name = "bench"
help = "build a benchmark suite (cached), compare merge methods over seeds, write table + plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=["vision-small", "text"], help="which suite")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (default 0 1 2)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="only these methods (default: the whole comparison)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for table.md and plot.png (default: report-SUITE/ under the benchmark "
        "cache, $PACTFRAME_CACHE or ~/.cache/pactframe/bench)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="four-point scaling grids and default variants only (cheaper)",
    )
    parser.add_argument(
        "--validation-examples",
        type=int,
        default=None,
        help="text suite: tune on the first N validation examples of each task",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from pactframe_bench.cache import cache_root
    from pactframe_bench.methods import reduced_methods, standard_methods
    from pactframe_bench.runner import run_suite, select_methods

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else cache_root() / f"report-{args.suite}"
    table = reduced_methods() if args.reduced else standard_methods()
    options = {}
    if args.validation_examples:
        options["validation_examples"] = args.validation_examples
    methods = select_methods(args.methods, table)
    run_suite(args.suite, args.seeds, out, methods, log=lambda m: print(m, flush=True), **options)
    return 0
