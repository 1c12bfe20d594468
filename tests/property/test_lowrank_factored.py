"""Factored task vectors (LoRA adapters, docs/lora.md): the factored paths of the SVD
backbones (Iso-C, Iso-CTS, TSV-M) and of the PACT presets give the merge of the dense
paths on ``B_t @ A_t``, whatever each task's rank (0 to beyond the merger's budget).

Inputs are generic: Gaussian factors drawn from a Hypothesis-chosen seed (float64,
``T`` in {2, 3, 4}, square, tall and wide shapes, sides 8 to 32, each task's rank 0
to ``min(m, n)``); Hypothesis chooses the seed, shape and ranks.
"""

from __future__ import annotations

import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.pact_presets import PRESETS
from pactframe_plugins.mergers.tsv_m import TSVM

from pactframe import LayerBundle, LowRank


@st.composite
def cases(draw: st.DrawFn) -> tuple[LayerBundle, LayerBundle, int, int]:
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["square", "tall", "wide"]))
    side = draw(st.integers(8, 32))
    other = draw(st.integers(8, 32))
    m, n = {"square": (side, side), "tall": (max(side, other), min(side, other)),
            "wide": (min(side, other), max(side, other))}[kind]
    T = draw(st.sampled_from([2, 3, 4]))
    ranks = [draw(st.integers(0, min(m, n))) for _ in range(T)]
    K = draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    note(f"seed={seed} shape=({m}, {n}) ranks={ranks} K={K} k={k}")
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(m, n, generator=g, dtype=torch.float64)
    lrs = [
        LowRank(
            torch.randn(m, r, generator=g, dtype=torch.float64),
            torch.randn(r, n, generator=g, dtype=torch.float64),
        )
        for r in ranks
    ]
    names = [f"t{t}" for t in range(T)]
    factored = LayerBundle("w", base, lrs, names, seed=seed % 1000)
    dense = LayerBundle("w", base, [lr.materialize() for lr in lrs], names, seed=seed % 1000)
    return factored, dense, K, k


@settings(max_examples=30, deadline=None)
@given(cases())
def test_factored_merge_equals_dense_merge_for_any_task_ranks(case) -> None:
    """Every backbone and PACT preset merges factored task vectors B_t A_t exactly as the
    dense B_t @ A_t (1e-8 relative to the largest task vector, float64), for task ranks
    from 0 to min(m, n): both paths keep the same numerical rank (docs/lora.md)."""
    factored, dense, K, k = case
    scale = max([float(tv.abs().max()) for tv in dense.task_vectors] + [1.0])
    mergers = [IsoC(), IsoCTS(), TSVM(), *(p(core_rank=K, task_rank=k) for p in PRESETS)]
    for merger in mergers:
        got, want = merger.merge(factored).delta, merger.merge(dense).delta
        err = float((got - want).abs().max()) / scale
        assert err <= 1e-8, (merger.name, err)
