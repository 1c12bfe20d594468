"""Independent numpy references for the PAVE tests (not imported by pactframe).

``algorithm1`` is a literal transcription of Algorithm 1 of the PAVE paper
(index set I, linear scan, strict ">" on exact fractions); ``damped`` repeats
CorDA's relative damping loop; ``pave_reference`` is eq. 5-6 in numpy.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def algorithm1(spectra: list[np.ndarray], rho: Fraction) -> list[int]:
    """Algorithm 1, lines 3-13, as printed (ties go to the lower model index; values equal
    to 1e-12 are ties, pactframe's convention so that rescaling a model cannot flip one)."""
    s = [np.sort(np.asarray(v, dtype=np.float64))[::-1] for v in spectra]
    s = [v / v[0] for v in s]
    K, R = len(s), len(s[0])
    gamma = rho - (1 - rho) / 2
    r = [R] * K
    index_set = [i for i in range(K) if not (R <= gamma * R or R <= 1)]
    while Fraction(sum(r), K * R) > rho and index_set:
        t = min(index_set, key=lambda i: (round(float(s[i][r[i] - 1]), 12), i))
        r[t] -= 1
        if r[t] <= gamma * R or r[t] <= 1:
            index_set.remove(t)
    return r


def damped(c: np.ndarray, damping: float = 0.01, relative: bool = True) -> np.ndarray:
    """CorDA / PAVE damping: add eps*scale*I, doubling eps until the inverse is accurate."""
    n = c.shape[0]
    c = 0.5 * (c + c.T)
    scale = np.mean(np.diag(c)) if relative else 1.0
    eps = damping
    while True:
        c_reg = c + eps * scale * np.eye(n)
        if np.linalg.norm(c_reg @ np.linalg.inv(c_reg) - np.eye(n)) < 0.05:
            return c_reg
        eps *= 2


def truncated_svd(a: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def pave_reference(w_ft: np.ndarray, c_reg: np.ndarray, r: int) -> np.ndarray:
    """Eq. 5: ``W_dagger = SVD_r(W_ft C) C^-1``."""
    return truncated_svd(w_ft @ c_reg, r) @ np.linalg.inv(c_reg)
