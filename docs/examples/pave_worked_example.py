"""Numbers quoted in docs/pave.md. Run: python docs/examples/pave_worked_example.py

Deterministic (fixed seeds, float64); a few seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from pactframe_plugins.decomposers.asvd import ActivationAwareSVD
from pactframe_plugins.decomposers.co_svd import ContextOrientedSVD
from pactframe_plugins.decomposers.exact_svd import ExactSVD
from pactframe_plugins.decomposers.svd_llm import WhitenedSVD
from pactframe_plugins.preprocessors._rank_allocation import (
    allocate_layer,
    normalized_spectrum,
    normalized_tail_energy,
    rank_floor,
    spectral_rank_allocation,
    stopping_ratio,
)


def one_layer() -> None:
    print("== 1. One layer, K = 3 models, R = 6 ==")
    sigma = {
        "A": [12.0, 6.0, 3.0, 1.2, 0.6, 0.12],  # fast decay: robust to pruning
        "B": [5.0, 4.5, 4.0, 3.5, 3.0, 2.5],  # flat: sensitive
        "C": [2.0, 1.5, 0.9, 0.5, 0.4, 0.3],
    }
    for task, values in sigma.items():
        print(f"  s_{task} = {np.round(normalized_spectrum(values), 3).tolist()}")
    for rho in (5 / 6, 2 / 3):
        ranks = allocate_layer(list(sigma.values()), rho)
        err = sum(
            normalized_tail_energy(normalized_spectrum(v), r) for v, r in zip(sigma.values(), ranks)
        )
        print(
            f"  rho = {rho:.4f}: gamma = {stopping_ratio(rho):.4f}, floor = {rank_floor(6, rho)}, "
            f"budget = floor(rho K R) = {int(rho * 18 + 1e-9)}, ranks = {dict(zip(sigma, ranks))}, "
            f"eq. 9 objective = {err:.4f}"
        )
        uniform = max(1, round(6 * rho))
        err_u = sum(normalized_tail_energy(normalized_spectrum(v), uniform) for v in sigma.values())
        print(f"    uniform (PAVE plain) r = {uniform} for all: eq. 9 objective = {err_u:.4f}")


def two_layers() -> None:
    print("== 2. Two layers: per-model ratio rho_i and the rank it implies ==")
    spectra = {
        "layer0": {"A": [12.0, 6.0, 3.0, 1.2, 0.6, 0.12], "B": [5.0, 4.5, 4.0, 3.5, 3.0, 2.5]},
        "layer1": {"A": [3.0, 2.9, 2.8, 2.7], "B": [9.0, 1.0, 0.1, 0.01]},
    }
    alloc = spectral_rank_allocation(spectra, 3 / 4)
    print(f"  rho = 0.75, per-layer ranks r_i^l = {alloc.ranks}")
    print(f"  rho_i = sum_l r_i^l / sum_l R^l = {alloc.ratios}")
    for layer, R in alloc.full_ranks.items():
        per_model = {t: max(1, round(R * q)) for t, q in alloc.ratios.items()}
        print(
            f"  {layer} (R={R}): per_model r = max(1, round(R rho_i)) = {per_model}, "
            f"per_layer r = {alloc.ranks[layer]}"
        )


def decomposers() -> None:
    print("== 3. Activation error at equal rank, one synthetic layer (64 x 48, 2000 tokens) ==")
    rng = np.random.default_rng(0)
    d_out, d_in, n = 64, 48, 2000
    w = rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)
    mix = rng.standard_normal((d_in, d_in)) * np.geomspace(3.0, 0.05, d_in)  # anisotropic inputs
    x = rng.standard_normal((n, d_in)) @ mix.T
    c = torch.from_numpy(x.T @ x / n)
    wt = torch.from_numpy(w)
    ref = np.linalg.norm(w @ x.T)
    print("  rank | exact_svd | asvd  | co_svd | svd_llm   (relative ||(W - W_r) X^T||_F)")
    for r in (8, 16, 32):
        row = []
        for dec in (ExactSVD(), ActivationAwareSVD(), ContextOrientedSVD(), WhitenedSVD()):
            cov = c if dec.requires_covariance else None
            approx = dec.decompose(wt, r, covariance=cov).reconstruct().numpy()
            row.append(np.linalg.norm((w - approx) @ x.T) / ref)
        print(f"  {r:4d} | " + " | ".join(f"{v:.4f}" for v in row))


if __name__ == "__main__":
    one_layer()
    two_layers()
    decomposers()
