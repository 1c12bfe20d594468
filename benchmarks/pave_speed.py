"""PAVE cost: covariance collection overhead and purification time per tensor.

Two measurements (float32, CPU unless ``--device``):

- ``collect``: an ``nn.TransformerEncoder`` (``--width`` d_model, 4 heads, FFN
  4 x width, 2 layers, batch-first), ``--batches`` batches of 8 x 128 tokens:
  wall time of the plain forward passes vs :func:`collect_covariances` over the
  same batches (hooks on every linear weight, including the extra attention
  forward that recovers ``out_proj``'s input).
- ``pave``: one ``(d_out, d_in)`` weight (``--shape``), ``--tasks`` tasks with
  task vectors ``0.05 G / sqrt(d_in)`` (Gaussian) and covariances
  ``X^T X / N`` of ``N = 2 d_in`` anisotropic rows: wall time of ``prepare`` +
  ``preprocess`` (spectral allocation: two decompositions per task) for each
  decomposer, and of ``preprocess`` alone with ``allocation: uniform``.

Times are the best of ``--repeats`` runs (``time.perf_counter``); the 1-minute
load average is printed, since shared machines skew the numbers.

    python benchmarks/pave_speed.py                    # 512x512, 4 tasks, width 256, 1 run
    python benchmarks/pave_speed.py --shape 4096x4096 --tasks 8 --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from pactframe_plugins.decomposers.asvd import ActivationAwareSVD
from pactframe_plugins.decomposers.co_svd import ContextOrientedSVD
from pactframe_plugins.decomposers.svd_llm import WhitenedSVD
from pactframe_plugins.preprocessors.pave import PAVEPurifier
from torch import nn

from pactframe import LayerBundle
from pactframe.covariance import collect_covariances


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_collect(width: int, batches: int, repeats: int, device: str) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(width, 4, 4 * width, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).to(device).eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(8, 128, width, generator=g).to(device) for _ in range(batches)]

    def plain() -> None:
        with torch.no_grad():
            for x in data:
                model(x)

    t_plain = best_of(repeats, plain)
    t_collect = best_of(repeats, lambda: collect_covariances(model, data))
    tokens = batches * 8 * 128
    print(
        f"collect  width={width} tokens={tokens}: forward {t_plain:.3f} s, "
        f"collect_covariances {t_collect:.3f} s ({t_collect / t_plain:.1f}x)"
    )


def bench_pave(shape: str, tasks: int, repeats: int, device: str) -> None:
    d_out, d_in = (int(v) for v in shape.split("x"))
    g = torch.Generator().manual_seed(2)
    base = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    tvs, covs = [], []
    scales = torch.logspace(0.5, -1.5, d_in)
    for _ in range(tasks):
        tvs.append(0.05 * torch.randn(d_out, d_in, generator=g) / d_in**0.5)
        x = torch.randn(2 * d_in, d_in, generator=g) * scales
        covs.append(x.T @ x / x.shape[0])
    bundle = LayerBundle(
        "layer.weight", base, tvs, [f"t{i}" for i in range(tasks)], covs
    ).map_tensors(lambda t: t.to(device))
    for decomposer in (ContextOrientedSVD(), ActivationAwareSVD(), WhitenedSVD()):
        pave = PAVEPurifier(decomposer=decomposer)
        t = best_of(repeats, lambda p=pave: p.preprocess(bundle, p.prepare([bundle])))
        print(f"pave     {shape} T={tasks} {decomposer.name:8s} spectral: {t:.3f} s")
    uniform = PAVEPurifier(allocation="uniform")
    t = best_of(repeats, lambda: uniform.preprocess(bundle))
    print(f"pave     {shape} T={tasks} co_svd   uniform : {t:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="512x512")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    bench_collect(args.width, args.batches, args.repeats, args.device)
    bench_pave(args.shape, args.tasks, args.repeats, args.device)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
