"""Where efficient TSV-M's time goes, step by step, on one matrix (issue 13).

For a ``(d_out, d_in)`` weight and ``T`` task vectors shaped like
``benchmarks/scale.py``'s (a rank-16 part plus a dense noise floor, stored in fp16,
computed in float32), this times each step of ``tsv_m`` with ``decomposer:
randomized_svd`` (route gram) in CPU seconds of this process (``time.process_time``,
so other jobs on the machine inflate it less than wall time), next to the same
matrix's Task Arithmetic work (sum and scale) and an exact SVD for scale:

- ``sketches``: the ``T`` rank-``min/T`` randomized SVDs (2 iterations, the default
  for such ranks);
- ``polar U`` / ``polar Vh``: the polar factors of the stacked bases through their
  float64 Gram matrices (:func:`pactframe.linalg.gram_polar_in_span`);
- ``product``: ``U_perp diag(s) Vh_perp``.

    python benchmarks/tsv_m_floor.py                        # 1024x1024, 2752x1024, 1024x2752, T=3
    python benchmarks/tsv_m_floor.py --shapes 4096x4096 --tasks 4
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def task_vectors(m: int, n: int, tasks: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(tasks):
        low = 2e-3 * (torch.randn(m, 16, generator=g) @ torch.randn(16, n, generator=g)) / 16
        out.append((low + 2e-4 * torch.randn(m, n, generator=g)).half().float())
    return out


def cpu_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def measure(m: int, n: int, tasks: int, repeats: int) -> dict[str, float]:
    """CPU seconds of each step for one ``(m, n)`` matrix and ``tasks`` task vectors."""
    from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD

    from pactframe.linalg import gram_polar_in_span

    deltas = task_vectors(m, n, tasks)
    k = min(m, n) // tasks
    rsvd = RandomizedSVD()
    gens = [torch.Generator().manual_seed(t) for t in range(tasks)]
    facts = [rsvd.decompose(d, k, generator=g) for d, g in zip(deltas, gens)]
    u = torch.cat([f.U for f in facts], dim=1)
    vh = torch.cat([f.Vh for f in facts], dim=0)
    s = torch.cat([f.S for f in facts])
    u_perp = gram_polar_in_span(u, unit_scale=True)
    vh_perp = gram_polar_in_span(vh, unit_scale=True)
    return {
        "TA": cpu_seconds(lambda: 0.3 * torch.stack(deltas).sum(dim=0), repeats),
        "sketches": cpu_seconds(
            lambda: [rsvd.decompose(d, k, generator=g) for d, g in zip(deltas, gens)], repeats
        ),
        "polar U": cpu_seconds(lambda: gram_polar_in_span(u, unit_scale=True), repeats),
        "polar Vh": cpu_seconds(lambda: gram_polar_in_span(vh, unit_scale=True), repeats),
        "product": cpu_seconds(lambda: (u_perp * s) @ vh_perp, repeats),
        "exact SVD": cpu_seconds(lambda: torch.linalg.svd(deltas[0], full_matrices=False), repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1024x1024,2752x1024,1024x2752")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# CPU seconds per matrix, {args.threads} thread(s), T = {args.tasks}")
    print(
        "| shape | TA | sketches | polar U | polar Vh | product | TSV-M total | x TA | exact SVD |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for token in args.shapes.split(","):
        m, n = (int(x) for x in token.split("x"))
        times = measure(m, n, args.tasks, args.repeats)
        total = sum(times[key] for key in ("sketches", "polar U", "polar Vh", "product"))
        ratio = total / times["TA"] if times["TA"] > 0 else math.inf
        print(
            f"| {m}x{n} | {times['TA']:.3f} | {times['sketches']:.3f} | {times['polar U']:.3f} "
            f"| {times['polar Vh']:.3f} | {times['product']:.3f} | {total:.3f} | {ratio:.0f}x "
            f"| {times['exact SVD']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
