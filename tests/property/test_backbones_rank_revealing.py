"""The SVD backbones (Iso-C, Iso-CTS, TSV-M) and the four PACT presets act only inside
the numerical rank: stable under rounding-size perturbations, range-preserving, and
unchanged on full-rank inputs (docs/mergers/iso_c.md, tsv_m.md, iso_cts.md).

Inputs are generic: Gaussian matrices drawn from a Hypothesis-chosen seed (float64,
``T`` in {2, 3, 4, 8}, square, tall and wide shapes, sides 16 to 40), with PACT ranks
``K + (T - 1) k <= d_in - 2`` so that PACT leaves every task something. Hypothesis
chooses the seed, shape and ranks; the matrices themselves are not shrunk, because
the properties are about generic (random) inputs, not structured ones.
"""

from __future__ import annotations

from unittest import mock

import attrs
import numpy as np
import torch
from hypothesis import example, given, note, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.pact_presets import PRESETS
from pactframe_plugins.mergers.tsv_m import TSVM
from pactframe_plugins.preprocessors.pact import PACTAligner

from tests.property._pact_reference import np_protect_projectors, np_top_basis
from tests.property._references_mergers import ref_iso_c, ref_iso_cts, ref_tsv_m
from tests.property._strategies_mergers import bundle_from_arrays

TASK_COUNTS = st.sampled_from([2, 3, 4, 8])
SHAPES = st.sampled_from(["square", "tall", "wide"])


def backbones() -> list:
    return [IsoC(), IsoCTS(), TSVM(), TSVM(rank_split="balanced")]


def presets(K: int, k: int) -> list:
    return [preset(core_rank=K, task_rank=k) for preset in PRESETS] + [
        PRESETS[3](core_rank=K, task_rank=k, rank_split="balanced")
    ]


@attrs.frozen
class Case:
    base: np.ndarray
    deltas: list[np.ndarray]
    K: int
    k: int
    seed: int

    def bundle(self, base: np.ndarray | None = None, deltas: list | None = None):
        return bundle_from_arrays(
            self.deltas if deltas is None else deltas, self.base if base is None else base
        )

    def perturbed(self, size: float = 1e-12):
        """The same case with base and task vectors each moved by ``size`` relative
        (Frobenius), in a random direction."""
        rng = np.random.default_rng(self.seed + 1)

        def move(a: np.ndarray) -> np.ndarray:
            e = rng.standard_normal(a.shape)
            return a + size * np.linalg.norm(a) / np.linalg.norm(e) * e

        return self.bundle(move(self.base), [move(d) for d in self.deltas])


@st.composite
def generic_cases(
    draw: st.DrawFn, tasks: st.SearchStrategy[int] = TASK_COUNTS, core_covered: bool = False
) -> Case:
    """Gaussian base and task vectors; PACT ranks that leave every task a non-empty
    complement (``K + (T-1) k <= d_in - 2``). ``core_covered``: ``T >= 3`` and
    ``(T-2) K >= (T-1) k``, so every task's protect space contains ``V_0K``."""
    T = draw(tasks)
    small = draw(st.integers(16, 28))
    large = small + draw(st.integers(4, 12))
    m, n = {"square": (small, small), "tall": (large, small), "wide": (small, large)}[
        draw(SHAPES)
    ]
    if core_covered:
        k = draw(st.integers(1, 2))
        K = draw(st.integers(-(-(T - 1) * k // (T - 2)), 8))
        if K + (T - 1) * k > n - 2:  # keep the complement non-empty on the narrowest shapes
            k, K = 1, -(-(T - 1) // (T - 2))
    else:
        K = draw(st.integers(1, 6))
        k = draw(st.integers(1, max(1, min(3, (n - 2 - K) // max(T - 1, 1)))))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((m, n))
    deltas = [rng.standard_normal((m, n)) for _ in range(T)]
    note(f"seed={seed}, (m, n)=({m}, {n}), T={T}, K={K}, k={k}")
    return Case(base, deltas, K, k, seed)


def seeded_case(seed: int, m: int, n: int, T: int, K: int, k: int) -> Case:
    """The case :func:`generic_cases` draws for these values (shrunk failures kept as
    regression examples)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((m, n))
    return Case(base, [rng.standard_normal((m, n)) for _ in range(T)], K, k, seed)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b||_F / ||b||_F`` (0 when both are 0)."""
    scale = np.linalg.norm(b)
    diff = np.linalg.norm(a - b)
    return 0.0 if diff == 0.0 else diff / scale


def span(rows: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis of the row space of ``rows`` (numpy SVD, singular values above
    ``rtol * sigma_max``), shape ``(n, r)``."""
    _, s, vh = np.linalg.svd(rows, full_matrices=False)
    keep = int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0
    return vh[:keep].T


def outside(matrix: np.ndarray, basis: np.ndarray) -> float:
    """Relative size of the part of ``matrix``'s rows outside ``range(basis)``."""
    residual = matrix - (matrix @ basis) @ basis.T
    total = np.linalg.norm(matrix)
    return 0.0 if total == 0.0 else float(np.linalg.norm(residual) / total)


# ---------------------------------------------------------------- stability
@settings(max_examples=25)
@given(generic_cases())
def test_every_backbone_moves_at_most_1e_8_under_a_1e_12_relative_perturbation(case):
    """Iso-C, Iso-CTS, TSV-M (both splits) on generic inputs: a 1e-12 relative change of
    the task vectors changes the merged delta by at most 1e-8 relative."""
    for merger in backbones():
        out = merger.merge(case.bundle()).delta.numpy()
        moved = merger.merge(case.perturbed()).delta.numpy()
        assert np.linalg.norm(out) > 0.0, repr(merger)
        assert rel(moved, out) <= 1e-8, repr(merger)


@settings(max_examples=25)
@given(generic_cases())
# Iso-C kept a rounding-noise direction (2.6e-13 relative) of the PACT-filtered sum
@example(case=seeded_case(612127745, 24, 17, 3, 4, 2))
def test_every_pact_preset_moves_at_most_1e_8_under_a_1e_12_relative_perturbation(case):
    """PACT-TA, PACT-IsoC, PACT-IsoCTS, PACT-TSVM (both splits): a 1e-12 relative change
    of the base and the task vectors changes the merged delta by at most 1e-8 relative,
    also when PACT makes the sum rank-deficient (T >= 3)."""
    for merger in presets(case.K, case.k):
        out = merger.merge(case.bundle()).delta.numpy()
        moved = merger.merge(case.perturbed()).delta.numpy()
        assert np.linalg.norm(out) > 0.0, repr(merger)
        assert rel(moved, out) <= 1e-8, repr(merger)


# ---------------------------------------------------------------- range preservation
@settings(max_examples=25)
@given(generic_cases())
def test_backbones_after_pact_keep_the_merge_in_the_span_of_the_processed_task_vectors(case):
    """After PACT, every backbone's merged delta has its row space inside the span of the
    processed task vectors' row spaces and its column space inside the span of their
    column spaces (relative residual <= 1e-10; spans from numpy's SVD)."""
    processed = PACTAligner(core_rank=case.K, task_rank=case.k).preprocess(case.bundle())
    filtered = [tv.numpy() for tv in processed.task_vectors]
    rows = span(np.concatenate(filtered, axis=0))
    cols = span(np.concatenate([d.T for d in filtered], axis=0))
    for merger in backbones():
        out = merger.merge(processed).delta.numpy()
        assert outside(out, rows) <= 1e-10, merger.name
        assert outside(out.T, cols) <= 1e-10, merger.name


@settings(max_examples=20)
@given(generic_cases(tasks=st.sampled_from([3, 4, 8]), core_covered=True))
# the same noise direction, flattened to the mean, held 28% of the merge's norm in V_0K
@example(case=seeded_case(7961, 20, 16, 3, 4, 2))
def test_pact_presets_put_no_energy_in_the_core_that_every_task_protects(case):
    """When (T-2) K >= (T-1) k every task's protect space contains V_0K (checked with the
    dense numpy reference); then every PACT preset's merged delta has
    ||delta V_0K||_F <= 1e-10 ||delta||_F (the authors' full-SVD Iso-C put 20-30% there)."""
    v0 = np_top_basis(case.base, case.K)
    for pi in np_protect_projectors(case.base, case.deltas, case.K, case.k):
        assert np.linalg.norm(v0 - pi @ v0) <= 1e-8  # the premise, independently
    for merger in presets(case.K, case.k):
        out = merger.merge(case.bundle()).delta.numpy()
        assert np.linalg.norm(out) > 0.0, repr(merger)
        assert np.linalg.norm(out @ v0) <= 1e-10 * np.linalg.norm(out), merger.name


# ---------------------------------------------------------------- cancelling tasks
def sign_flipping_svd(seed: int):
    """``torch.linalg.svd`` with the sign of every singular pair ``(u_i, v_i)`` flipped at
    random: another valid SVD, as a different LAPACK could return."""
    original = torch.linalg.svd
    gen = torch.Generator().manual_seed(seed)

    def svd(a, full_matrices=True, **kwargs):
        U, S, Vh = original(a, full_matrices=full_matrices, **kwargs)
        signs = torch.randint(0, 2, (U.shape[-1],), generator=gen).to(U.dtype) * 2 - 1
        U = U * signs
        Vh = Vh * signs[: Vh.shape[-2]].unsqueeze(-1)
        return U, S, Vh

    return svd


@st.composite
def single_matrices(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    m, n = draw(st.integers(2, 24)), draw(st.integers(2, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    note(f"seed={seed}, (m, n)=({m}, {n})")
    return np.random.default_rng(seed).standard_normal((m, n)), seed


@settings(max_examples=30)
@given(single_matrices(), st.booleans())
def test_tsv_m_iso_c_and_iso_cts_of_a_task_vector_and_its_negation_are_zero(case, flip):
    """{D, -D} sums to zero, so Iso-C and Iso-CTS give 0, and TSV-M gives 0 (its stacked
    bases are [U_k, +-U_k] and [Vh_k; -+Vh_k], rank k), whatever signs the SVD picks
    (``flip``: every singular pair's sign drawn at random). With the balanced split and
    odd r the first task keeps one triplet more, and exactly that triplet remains."""
    D, seed = case
    u, s, vh = np.linalg.svd(D, full_matrices=False)
    r = min(D.shape)
    odd = slice(r // 2, r // 2 + r % 2)  # the triplet only the first task keeps (odd r)
    extra = (u[:, odd] * s[odd]) @ vh[odd]
    bundle = bundle_from_arrays([D, -D])
    expectations = [(TSVM(), 0.0 * D), (IsoC(), 0.0 * D), (IsoCTS(), 0.0 * D)]
    expectations.append((TSVM(rank_split="balanced"), extra))
    with mock.patch("torch.linalg.svd", sign_flipping_svd(seed) if flip else torch.linalg.svd):
        for merger, expected in expectations:
            out = merger.merge(bundle).delta.numpy()
            assert np.linalg.norm(out - expected) <= 1e-12 * np.linalg.norm(D), repr(merger)


@settings(max_examples=30)
@given(single_matrices(), st.booleans())
def test_tsv_m_of_a_task_vector_twice_is_its_top_k_truncation(case, flip):
    """{D, D}: TSV-M's stacks are [U_k, U_k] and [Vh_k; Vh_k]; orthogonalised inside their
    span they give U_k diag(S_k) Vh_k with k = floor(r / 2), whatever signs the SVD picks."""
    D, seed = case
    u, s, vh = np.linalg.svd(D, full_matrices=False)
    k = min(D.shape) // 2
    expected = (u[:, :k] * s[:k]) @ vh[:k]
    with mock.patch("torch.linalg.svd", sign_flipping_svd(seed) if flip else torch.linalg.svd):
        out = TSVM().merge(bundle_from_arrays([D, D])).delta.numpy()
    assert np.linalg.norm(out - expected) <= 1e-10 * np.linalg.norm(D)


# ---------------------------------------------------------------- full rank: unchanged
@settings(max_examples=25)
@given(generic_cases(tasks=st.sampled_from([1, 2, 3, 4, 8])), st.floats(0.1, 3.0))
def test_full_rank_results_equal_the_authors_formulas_to_1e_10(case, alpha):
    """On generic full-rank inputs the rank-revealing backbones give exactly the
    authors' full-SVD formulas (frozen numpy copies in tests/property/
    _references_mergers.py, never calling pactframe): relative difference <= 1e-10."""
    bundle = case.bundle()
    cases = [
        (IsoC(scaling=alpha), ref_iso_c(case.deltas, alpha)),
        (TSVM(scaling=alpha), ref_tsv_m(case.deltas, alpha, "floor")),
        (TSVM(scaling=alpha, rank_split="balanced"), ref_tsv_m(case.deltas, alpha, "balanced")),
    ]
    r, T = min(case.base.shape), len(case.deltas)
    for fraction in (0.8, 0.5):
        if r - round((r - int(r * fraction)) / T) * T >= 0:  # where the authors' rule is defined
            cases.append(
                (
                    IsoCTS(scaling=alpha, common_space_fraction=fraction),
                    ref_iso_cts(case.deltas, fraction, alpha),
                )
            )
    for merger, expected in cases:
        assert rel(merger.merge(bundle).delta.numpy(), expected) <= 1e-10, merger.name


def test_tsv_m_clips_each_budget_to_the_task_rank_and_records_it():
    """Rank-1 task vectors a_t b_t^T with budget 3 each (6 x 6, T = 2): each task gives
    its one real triplet, the stacks are the two unit vectors side by side, and the
    merge is polar([a1, a2]) diag(|a1||b1|, |a2||b2|) polar([b1, b2])^T (numpy), with
    ``kept_ranks`` [1, 1] in the record. The authors' rule would add two arbitrary
    null-space triplets per task to the polar factors."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 6)), rng.standard_normal((2, 6))
    deltas = [np.outer(a[t], b[t]) for t in range(2)]
    result = TSVM().merge(bundle_from_arrays(deltas))
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)

    def np_polar(x: np.ndarray) -> np.ndarray:
        u, _, vh = np.linalg.svd(x, full_matrices=False)
        return u @ vh

    expected = (np_polar((a / na[:, None]).T) * (na * nb)) @ np_polar(b / nb[:, None])
    assert rel(result.delta.numpy(), expected) <= 1e-12
    assert result.records[-1].data["kept_ranks"] == [1, 1]
    assert result.records[-1].data["task_ranks"] == [3, 3]
