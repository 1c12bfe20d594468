"""``pactframe diagnose CONFIG OUTDIR``: per-tensor intrusion energy and singular
spectra to CSV (and PNG plots when matplotlib is installed), without writing a model."""

from __future__ import annotations

import argparse

help = "per-tensor intrusion energy and singular spectra of a merge, as CSV and PNG (no model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the merge config (YAML)")
    parser.add_argument("outdir", help="folder for the CSV files and plots")
    parser.add_argument("--device", help="override the config's device")
    parser.add_argument("--top", type=int, default=32, help="singular values kept per series")
    parser.add_argument("--no-plots", action="store_true", help="CSV only")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    from pactframe.diagnose import diagnose

    written, note = diagnose(
        args.config,
        args.outdir,
        device=args.device,
        top=args.top,
        plots=not args.no_plots,
        progress=not args.quiet,
    )
    for path in written:
        print(f"wrote {path}")
    if note:
        print(note)
    return 0
