"""What the rank-revealing SVD backbones change after PACT: energy in the protected
core and sensitivity to a 1e-12 perturbation, against the authors' full-SVD formulas.

For each shape ``(m, n)`` and ``T`` (float64, seed 0): a Gaussian base ``W_0`` and
Gaussian task vectors; PACT with the default ``(K, k) = (15, 8)`` (pactframe's
``pact`` preprocessor); then every backbone twice, as pactframe computes it
(rank-revealing) and as the authors' code does (full SVD of the sum for Iso-C,
polar factors of the whole stacks for TSV-M, written in numpy here). Reported per
backbone:

- ``core``: ``||delta V_0K||_F^2 / ||delta||_F^2``, the share of the merge in the
  pre-trained core that PACT protects (``V_0K``: top-15 right singular vectors of
  ``W_0``);
- ``moved``: ``||delta' - delta||_F / ||delta||_F`` when base and task vectors are
  moved by 1e-12 relative (Frobenius) in a random direction before PACT;
- for TSV-M and Iso-C also ``{D, -D}``: the norm of the merge of a Gaussian ``D``
  (48 x 32) and its negation, relative to ``||D||_F``.

    python benchmarks/rank_deficiency.py
    python benchmarks/rank_deficiency.py --shapes 768x768 --tasks 8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.tsv_m import TSVM
from pactframe_plugins.preprocessors.pact import PACTAligner

from pactframe import LayerBundle


def authors_iso_c(deltas: list[np.ndarray]) -> np.ndarray:
    u, s, vh = np.linalg.svd(np.sum(deltas, axis=0), full_matrices=False)
    return s.mean() * (u @ vh)


def _polar(a: np.ndarray) -> np.ndarray:
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    return u @ vh


def authors_tsv_m(deltas: list[np.ndarray]) -> np.ndarray:
    k = min(deltas[0].shape) // len(deltas)
    us, ss, vs = [], [], []
    for d in deltas:
        u, s, vh = np.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k])
    return (_polar(np.concatenate(us, 1)) * np.concatenate(ss)) @ _polar(np.concatenate(vs, 0))


def _bundle(base: np.ndarray, deltas: list[np.ndarray]) -> LayerBundle:
    return LayerBundle(
        "layer.weight",
        torch.from_numpy(base),
        [torch.from_numpy(d) for d in deltas],
        [f"t{i}" for i in range(len(deltas))],
    )


def _moved(rng: np.random.Generator, a: np.ndarray, size: float = 1e-12) -> np.ndarray:
    e = rng.standard_normal(a.shape)
    return a + size * np.linalg.norm(a) / np.linalg.norm(e) * e


def run(m: int, n: int, T: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((m, n))
    deltas = [rng.standard_normal((m, n)) for _ in range(T)]
    moved_base, moved_deltas = _moved(rng, base), [_moved(rng, d) for d in deltas]
    v0 = np.linalg.svd(base)[2][:15].T
    pact = PACTAligner()

    def filtered(b: np.ndarray, ds: list[np.ndarray]) -> list[np.ndarray]:
        return [t.numpy() for t in pact.preprocess(_bundle(b, ds)).task_vectors]

    plain, moved = filtered(base, deltas), filtered(moved_base, moved_deltas)
    if not any(np.any(d) for d in plain):
        print(f"{m}x{n} T={T} PACT zeroes every task vector (d_in <= K + (T-1) k): merge 0")
        return
    merges = {
        "iso_c (pactframe)": lambda ds: IsoC().merge(_bundle(base, ds)).delta.numpy(),
        "iso_c (authors)": authors_iso_c,
        "tsv_m (pactframe)": lambda ds: TSVM().merge(_bundle(base, ds)).delta.numpy(),
        "tsv_m (authors)": authors_tsv_m,
    }
    for name, merge in merges.items():
        a, b = merge(plain), merge(moved)
        core = np.linalg.norm(a @ v0) ** 2 / np.linalg.norm(a) ** 2
        change = np.linalg.norm(b - a) / np.linalg.norm(a)
        print(f"{m}x{n} T={T} PACT+{name:18s} core {core:9.2e}   moved {change:9.2e}")


def negation() -> None:
    D = np.random.default_rng(1).standard_normal((48, 32))
    cases = {
        "iso_c (pactframe)": IsoC().merge(_bundle(D, [D, -D])).delta.numpy(),
        "iso_c (authors)": authors_iso_c([D, -D]),
        "tsv_m (pactframe)": TSVM().merge(_bundle(D, [D, -D])).delta.numpy(),
        "tsv_m (authors)": authors_tsv_m([D, -D]),
    }
    for name, out in cases.items():
        ratio = np.linalg.norm(out) / np.linalg.norm(D)
        print(f"{{D, -D}} {name:18s} ||merge||_F / ||D||_F = {ratio:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["64x64", "96x48", "128x64", "256x256"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[3, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for shape in args.shapes:
        m, n = (int(x) for x in shape.split("x"))
        for T in args.tasks:
            run(m, n, T)
    negation()


if __name__ == "__main__":
    main()
