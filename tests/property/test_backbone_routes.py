"""The Gram route of the SVD backbones (``route: gram``, docs/mergers/index.md) keeps
issue 11's rank-revealing properties and, on generic full-rank inputs, gives the
authors' full-SVD formulas; the presets pass one ``decomposer`` to PACT and backbone.

References are the frozen numpy formulas of tests/property/_references_mergers.py
(numpy SVDs, never pactframe). Inputs as tests/property/test_backbones_rank_revealing.py.
"""

from __future__ import annotations

from unittest import mock

import attrs
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.pact_presets import PRESETS
from pactframe_plugins.mergers.tsv_m import TSVM
from pactframe_plugins.preprocessors.pact import PACTAligner

from tests.property._references_mergers import ref_iso_c, ref_iso_cts, ref_tsv_m
from tests.property._strategies_mergers import bundle_from_arrays
from tests.property.test_backbones_rank_revealing import (
    generic_cases,
    outside,
    rel,
    sign_flipping_svd,
    single_matrices,
    span,
)


def gram_backbones() -> list:
    return [
        IsoC(route="gram"),
        IsoCTS(route="gram"),
        TSVM(route="gram"),
        TSVM(route="gram", rank_split="balanced"),
    ]


@settings(max_examples=25)
@given(generic_cases(tasks=st.sampled_from([1, 2, 3, 4, 8])), st.floats(0.1, 3.0))
def test_gram_route_equals_the_authors_formulas_on_full_rank_inputs_to_1e_6(case, alpha):
    """Generic full-rank float64 inputs: Iso-C, TSV-M (both splits) and Iso-CTS through
    the Gram route agree with the authors' full-SVD formulas to 1e-6 relative. The
    route squares the condition number, so its error is about eps64 cond^2: square
    stacks (T = 8, balanced split filling all r slots) are ill-conditioned enough to
    reach 1.1e-7 (seed 1024, 30 x 23), while the exact route meets 1e-10."""
    bundle = case.bundle()
    checks = [
        (IsoC(scaling=alpha, route="gram"), ref_iso_c(case.deltas, alpha)),
        (TSVM(scaling=alpha, route="gram"), ref_tsv_m(case.deltas, alpha, "floor")),
        (
            TSVM(scaling=alpha, route="gram", rank_split="balanced"),
            ref_tsv_m(case.deltas, alpha, "balanced"),
        ),
    ]
    r, T = min(case.base.shape), len(case.deltas)
    if r - round((r - int(r * 0.8)) / T) * T >= 0:
        checks.append((IsoCTS(scaling=alpha, route="gram"), ref_iso_cts(case.deltas, 0.8, alpha)))
    for merger, expected in checks:
        assert rel(merger.merge(bundle).delta.numpy(), expected) <= 1e-6, merger.name


@settings(max_examples=20)
@given(generic_cases())
def test_gram_route_moves_at_most_1e_6_under_a_1e_12_relative_perturbation(case):
    """Gram-route backbones and Efficient PACT presets (randomized_svd end to end):
    a 1e-12 relative change of the inputs moves the merge by at most 1e-6 relative
    (the Gram route amplifies rounding by cond^2 rather than cond; what the bound rules
    out is the O(1) jumps of arbitrary null directions, issue 11)."""
    efficient = [p(core_rank=case.K, task_rank=case.k, decomposer=RandomizedSVD()) for p in PRESETS]
    for merger in [*gram_backbones(), *efficient]:
        out = merger.merge(case.bundle()).delta.numpy()
        moved = merger.merge(case.perturbed()).delta.numpy()
        assert np.linalg.norm(out) > 0.0, repr(merger)
        assert rel(moved, out) <= 1e-6, repr(merger)


@settings(max_examples=20)
@given(generic_cases())
def test_gram_route_after_pact_keeps_the_merge_in_the_span_of_the_processed_task_vectors(case):
    """After PACT the Gram-route merge's row and column spaces lie in the spans of the
    processed task vectors' (relative residual <= 1e-10; spans from numpy's SVD)."""
    processed = PACTAligner(core_rank=case.K, task_rank=case.k).preprocess(case.bundle())
    filtered = [tv.numpy() for tv in processed.task_vectors]
    rows = span(np.concatenate(filtered, axis=0))
    cols = span(np.concatenate([d.T for d in filtered], axis=0))
    for merger in gram_backbones():
        out = merger.merge(processed).delta.numpy()
        assert outside(out, rows) <= 1e-10, merger.name
        assert outside(out.T, cols) <= 1e-10, merger.name


@settings(max_examples=30)
@given(single_matrices(), st.booleans())
def test_gram_route_of_a_task_vector_and_its_negation_is_zero(case, flip):
    """{D, -D}: Iso-C and Iso-CTS through the Gram route give 0, TSV-M gives 0 (its
    stacks have rank k, whatever signs the per-task SVD picks)."""
    D, seed = case
    bundle = bundle_from_arrays([D, -D])
    with mock.patch("torch.linalg.svd", sign_flipping_svd(seed) if flip else torch.linalg.svd):
        for merger in gram_backbones()[:3]:
            out = merger.merge(bundle).delta.numpy()
            assert np.linalg.norm(out) <= 1e-12 * np.linalg.norm(D), repr(merger)


@settings(max_examples=30)
@given(single_matrices())
def test_gram_route_tsv_m_of_a_task_vector_twice_is_its_top_k_truncation(case):
    """{D, D} through the Gram route: U_k diag(S_k) Vh_k with k = floor(r / 2)."""
    D, _ = case
    u, s, vh = np.linalg.svd(D, full_matrices=False)
    k = min(D.shape) // 2
    expected = (u[:, :k] * s[:k]) @ vh[:k]
    out = TSVM(route="gram").merge(bundle_from_arrays([D, D])).delta.numpy()
    assert np.linalg.norm(out - expected) <= 1e-10 * np.linalg.norm(D)


@settings(max_examples=15)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 4]))
def test_gram_route_float32_matches_the_exact_route_to_float32_accuracy(seed, T):
    """float32 task vectors (48 x 32, spectra decaying to 1e-2): every backbone's Gram
    route agrees with its exact route to 1e-4 relative (same rank decisions)."""
    rng = np.random.default_rng(seed)

    def task() -> np.ndarray:
        q1 = np.linalg.qr(rng.standard_normal((48, 32)))[0]
        q2 = np.linalg.qr(rng.standard_normal((32, 32)))[0]
        return (q1 * np.logspace(0, -2, 32)) @ q2.T

    deltas = [torch.from_numpy(task()).float() for _ in range(T)]
    bundle = bundle_from_arrays([d.double().numpy() for d in deltas])
    bundle = attrs.evolve(bundle, base=bundle.base.float(), task_vectors=deltas)
    for exact, gram in zip([IsoC(), IsoCTS(), TSVM()], gram_backbones()[:3]):
        want = exact.merge(bundle).delta.double().numpy()
        got = gram.merge(bundle).delta
        assert got.dtype == torch.float32
        assert rel(got.double().numpy(), want) <= 1e-4, gram.name
