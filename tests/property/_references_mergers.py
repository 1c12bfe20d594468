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


def ref_keep_count(fraction: float, total: int) -> int:
    """ceil(fraction * total) on the decimal value (e.g. 0.07 of 100 is 7, where the
    float product 7.000000000000001 would round up to 8)."""
    from decimal import ROUND_CEILING, Decimal

    return int((Decimal(repr(fraction)) * total).to_integral_value(rounding=ROUND_CEILING))


def ref_ties(
    deltas: list[np.ndarray],
    keep_fraction: float,
    disjoint: str = "mean",
    scaling: float = 1.0,
    thresholds: list[float] | None = None,
) -> np.ndarray:
    """TIES on one tensor: trim (top ceil(kD) magnitudes, or |x| >= thresholds[t]),
    elect sign(sum) with zero sums set to sign(sum of elected signs), disjoint merge."""
    M = np.stack([np.asarray(d, dtype=np.float64).ravel() for d in deltas])
    T, D = M.shape
    trimmed = np.zeros_like(M)
    for t in range(T):
        if thresholds is None:
            n_keep = ref_keep_count(keep_fraction, D)
            kth = np.sort(np.abs(M[t]))[::-1][n_keep - 1]
        else:
            kth = thresholds[t]
        trimmed[t] = np.where(np.abs(M[t]) >= kth, M[t], 0.0)
    elected = np.sign(trimmed.sum(axis=0))
    elected[elected == 0] = np.sign(elected.sum())
    agree = (np.sign(trimmed) == elected) & (trimmed != 0)
    selected = np.where(agree, trimmed, 0.0)
    merged = selected.sum(axis=0)
    if disjoint == "mean":
        merged = merged / np.maximum(agree.sum(axis=0), 1)
    return scaling * merged.reshape(np.shape(deltas[0]))


def ref_global_thresholds(tensors: list[list[np.ndarray]], keep_fraction: float) -> list[float]:
    """Exact per-task kth-largest magnitude over all tensors (``tensors[i][t]``:
    task t's vector of tensor i)."""
    T = len(tensors[0])
    out = []
    for t in range(T):
        mags = np.concatenate([np.abs(np.ravel(tensor[t])) for tensor in tensors])
        n_keep = ref_keep_count(keep_fraction, mags.size)
        out.append(float(np.sort(mags)[::-1][n_keep - 1]))
    return out


def ref_emr(
    tensors: list[list[np.ndarray]],
) -> tuple[list[np.ndarray], list[list[np.ndarray]], list[float]]:
    """EMR over a model (``tensors[i][t]``: task t's vector of tensor i), as
    merge_vit/src/main_emr_merging.py: returns (tau_uni per tensor, masks per tensor
    per task, lambda per task), lambda = sum_i mean|D_t,i| / sum_i mean|tau_uni,i m_t,i|."""
    T = len(tensors[0])
    unified, all_masks = [], []
    num, den = np.zeros(T), np.zeros(T)
    for deltas in tensors:
        M = np.stack([np.asarray(d, dtype=np.float64) for d in deltas])
        flag = np.where(M.sum(axis=0) > 0, 1.0, -1.0)
        masks = M * flag > 0
        tau = flag * np.max(np.abs(M) * masks, axis=0)
        unified.append(tau)
        all_masks.append(list(masks))
        for t in range(T):
            num[t] += np.abs(M[t]).mean()
            den[t] += np.abs(tau * masks[t]).mean()
    lambdas = [n / d if d > 0 else 1.0 for n, d in zip(num, den)]
    return unified, all_masks, lambdas
