"""Independent dense numpy references of the SVD-based mergers, written from the
authors' published algorithms (zero-padded layouts as in their code), never
calling pactframe. Used by the unit and property tests of the merger family."""

from __future__ import annotations

import numpy as np


def np_polar(a: np.ndarray) -> np.ndarray:
    """Orthogonal polar factor u @ vh."""
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    return u @ vh


def ref_iso_c(deltas: list[np.ndarray], alpha: float = 1.0) -> np.ndarray:
    """Iso-C: U (mean S) Vh of the summed task matrices (iso-merging src/utils/iso.py)."""
    u, s, vh = np.linalg.svd(np.sum(deltas, axis=0), full_matrices=False)
    return alpha * s.mean() * (u @ vh)


def ref_tsv_m(deltas: list[np.ndarray], alpha: float = 1.0, split: str = "floor") -> np.ndarray:
    """TSV-M with the authors' zero-padded (m x r) and (r x n) concatenations."""
    m, n = deltas[0].shape
    r, T = min(m, n), len(deltas)
    if split == "floor":
        ranks = [int(r / T)] * T
    else:  # the PACT repository's split
        ranks = [r // T + (1 if t < r % T else 0) for t in range(T)]
    U_sum, S_sum, V_sum = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    start = 0
    for delta, k in zip(deltas, ranks):
        u, s, vh = np.linalg.svd(delta, full_matrices=False)
        U_sum[:, start : start + k] = u[:, :k]
        S_sum[start : start + k] = s[:k]
        V_sum[start : start + k, :] = vh[:k, :]
        start += k
    return alpha * (np_polar(U_sum) * S_sum) @ np_polar(V_sum)


def ref_iso_cts(deltas: list[np.ndarray], fraction: float, alpha: float = 1.0) -> np.ndarray:
    """Iso-CTS as in iso-merging src/utils/iso.py (fixed-size buffers, common space last)."""
    m, n = deltas[0].shape
    r, T = min(m, n), len(deltas)
    c = int(r * fraction)
    c = r - round((r - c) / T) * T
    assert c >= 0, "reference formula only valid where it gives c >= 0"
    s_dims = (r - c) // T
    u, s, vh = np.linalg.svd(np.sum(deltas, axis=0), full_matrices=False)
    uc, sc, vc = u[:, :c], s[:c], vh[:c]
    U_all, S_all, V_all = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for t, delta in enumerate(deltas):
        w_ts = delta - uc @ uc.T @ delta
        ut, st_, vt = np.linalg.svd(w_ts, full_matrices=False)
        U_all[:, t * s_dims : (t + 1) * s_dims] = ut[:, :s_dims]
        S_all[t * s_dims : (t + 1) * s_dims] = st_[:s_dims]
        V_all[t * s_dims : (t + 1) * s_dims] = vt[:s_dims]
    U_all[:, T * s_dims : T * s_dims + c] = uc
    S_all[T * s_dims : T * s_dims + c] = sc
    V_all[T * s_dims : T * s_dims + c] = vc
    return alpha * S_all.mean() * (np_polar(U_all) @ np_polar(V_all))
