"""Time per layer of every built-in merger (and DARE), plus TIES' global-trim prepass.

Inputs (float32, seed 0): for each shape ``(d_out, d_in)`` and ``T`` tasks, task
vectors ``Delta_t`` with i.i.d. N(0, 0.01^2) entries (full rank: the SVD-based
mergers do full work). Each merger runs ``--repeats`` times on the same bundle;
the median wall time (``time.perf_counter``) is reported, with the 1-minute load
average before and after (the numbers are only comparable on an idle machine).
Intra-op threads: ``--threads`` (default 1).

The TIES ``trim_scope="global"`` prepass is timed separately: ``prepare`` over
``--tensors`` copies of the first shape, i.e. one streaming pass building the
per-task 2^20-bin histograms, reported as time per tensor and per million entries.

    python benchmarks/mergers_speed.py                          # 768x768 and 3072x768, T = 8
    python benchmarks/mergers_speed.py --shapes 4096x4096 --tasks 4 --repeats 1
    python benchmarks/mergers_speed.py --only task_arithmetic ties --shapes 32000x768 --tasks 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from pactframe import LayerBundle


def _bundle(shape: tuple[int, int], tasks: int, name: str = "layer.weight") -> LayerBundle:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g)
    tvs = [0.01 * torch.randn(shape, generator=g) for _ in range(tasks)]
    return LayerBundle(name, base, tvs, [f"task{t}" for t in range(tasks)], seed=0)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["768x768", "3072x768"])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tensors", type=int, default=8, help="tensors in the TIES prepass")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="time only these components (first word of a row label, e.g. ties tsv_m)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pactframe_plugins.mergers.average import WeightAveraging
    from pactframe_plugins.mergers.emr import EMR
    from pactframe_plugins.mergers.iso_c import IsoC
    from pactframe_plugins.mergers.iso_cts import IsoCTS
    from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic
    from pactframe_plugins.mergers.ties import TIES
    from pactframe_plugins.mergers.tsv_m import TSVM
    from pactframe_plugins.preprocessors.dare import DARE

    components = [
        ("average", WeightAveraging().merge),
        ("task_arithmetic", TaskArithmetic().merge),
        ("ties (tensor trim)", TIES().merge),
        ("emr (one tensor)", EMR().merge),
        ("tsv_m", TSVM().merge),
        ("iso_c", IsoC().merge),
        ("iso_cts", IsoCTS().merge),
        ("dare (preprocess)", DARE().preprocess),
    ]
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {args.threads}, "
          f"T = {args.tasks}, float32, median of {args.repeats}")
    print(f"# load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'component':<20} " + " ".join(f"{s:>12}" for s in args.shapes))
    bundles = [_bundle(tuple(int(x) for x in s.split("x")), args.tasks) for s in args.shapes]
    if args.only:
        components = [(label, fn) for label, fn in components if label.split()[0] in args.only]
    for label, fn in components:
        row = [_median_time(lambda b=b, fn=fn: fn(b), args.repeats) for b in bundles]
        print(f"{label:<20} " + " ".join(f"{t * 1e3:>10.1f}ms" for t in row))

    first = bundles[0]
    model = [
        LayerBundle(f"layer{i}.weight", first.base, first.task_vectors, first.task_names, seed=i)
        for i in range(args.tensors)
    ]
    ties = TIES(trim_scope="global")
    seconds = _median_time(lambda: ties.prepare(iter(model)), args.repeats)
    entries = args.tensors * first.base.numel() * args.tasks
    print(f"TIES global prepass over {args.tensors} x {args.shapes[0]} x T={args.tasks}: "
          f"{seconds:.2f} s, {seconds / args.tensors * 1e3:.1f} ms per tensor, "
          f"{seconds / entries * 1e6 * 1e3:.2f} ms per million entries; "
          f"histograms {args.tasks} x 8 MiB")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
