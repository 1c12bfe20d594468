"""LowRank (factored task vectors) and the factored paths of the components,
against dense references (numpy SVD, the dense component on B @ A)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pactframe_plugins.decomposers.co_svd import ContextOrientedSVD as COSVD
from pactframe_plugins.decomposers.exact_svd import ExactSVD
from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD
from pactframe_plugins.evaluators.intrusion_energy import (
    intrusion_energy,
    intrusion_energy_low_rank,
)
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.tsv_m import TSVM
from pactframe_plugins.preprocessors.pact import PACTAligner

from pactframe import LayerBundle, LowRank
from pactframe.errors import InputError


def _low_rank(m: int, n: int, r: int, seed: int) -> LowRank:
    g = torch.Generator().manual_seed(seed)
    return LowRank(
        torch.randn(m, r, generator=g, dtype=torch.float64),
        torch.randn(r, n, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize(("m", "n", "r"), [(40, 30, 5), (30, 40, 7), (12, 50, 12)])
def test_low_rank_svd_equals_numpy_svd_of_the_product(m: int, n: int, r: int) -> None:
    """QR of both factors + r x r SVD gives numpy's singular values and the same matrix."""
    lr = _low_rank(m, n, r, m + n)
    dense = lr.materialize().numpy()
    want = np.linalg.svd(dense, compute_uv=False)[:r]
    f = lr.svd()
    assert f.rank == r
    np.testing.assert_allclose(f.S.numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(f.reconstruct().numpy(), dense, atol=1e-10)
    np.testing.assert_allclose((f.U.T @ f.U).numpy(), np.eye(r), atol=1e-12)
    np.testing.assert_allclose((f.Vh @ f.Vh.T).numpy(), np.eye(r), atol=1e-12)
    k = 3
    top = np.linalg.svd(dense)
    best = (top[0][:, :k] * top[1][:k]) @ top[2][:k]
    np.testing.assert_allclose(lr.svd(k).reconstruct().numpy(), best, atol=1e-9)


def test_low_rank_norm_and_transpose() -> None:
    lr = _low_rank(9, 7, 3, 1)
    assert lr.squared_norm() == pytest.approx(float((lr.materialize() ** 2).sum()), rel=1e-12)
    torch.testing.assert_close(lr.transpose().materialize(), lr.materialize().T)
    with pytest.raises(InputError, match="B \\(m, r\\) and A \\(r, n\\)"):
        LowRank(torch.ones(3, 2), torch.ones(3, 4))


def test_decomposers_accept_factored_input() -> None:
    """exact/randomized: exact from the factors; a context-aware decomposer materialises."""
    lr = _low_rank(20, 16, 4, 2)
    dense = lr.materialize()
    for dec in (ExactSVD(), RandomizedSVD()):
        f = dec.decompose_low_rank(lr, 3)
        torch.testing.assert_close(f.reconstruct(), ExactSVD().decompose(dense, 3).reconstruct())
    cov = torch.eye(16, dtype=torch.float64) * 2.0
    got = COSVD().decompose_low_rank(lr, 3, covariance=cov).reconstruct()
    want = COSVD().decompose(dense, 3, covariance=cov).reconstruct()
    torch.testing.assert_close(got, want)


def _bundles(rank: int = 8, shape: tuple[int, int] = (20, 16)) -> tuple[LayerBundle, LayerBundle]:
    g = torch.Generator().manual_seed(5)
    base = torch.randn(*shape, generator=g, dtype=torch.float64)
    lrs = [_low_rank(*shape, rank, 10 + t) for t in range(3)]
    names = ["a", "b", "c"]
    factored = LayerBundle("w", base, lrs, names, seed=3)
    dense = LayerBundle("w", base, [lr.materialize() for lr in lrs], names, seed=3)
    return factored, dense


def test_bundle_materialises_factored_task_vectors_lazily() -> None:
    """Third-party components read dense task_vectors; the factors stay available."""
    factored, dense = _bundles()
    assert factored.is_factored and not dense.is_factored
    assert all(f is not None for f in factored.factored_task_vectors)
    for a, b in zip(factored.task_vectors, dense.task_vectors):
        torch.testing.assert_close(a, b)
    assert factored.task_vectors[0] is factored.task_vectors[0]  # materialised once
    assert not factored.materialized().is_factored
    moved = factored.map_tensors(lambda x: x.to(torch.float32))
    assert moved.factored_task_vectors[0].dtype == torch.float32  # type: ignore[union-attr]


def test_factored_tsv_m_iso_c_iso_cts_pact_equal_their_dense_paths() -> None:
    """Full-budget ranks (rank 8 >= min(m, n) / 3 = 5; summed rank 24 >= 16)."""
    factored, dense = _bundles()
    for merger in (TSVM(), IsoC(), IsoCTS()):
        torch.testing.assert_close(
            merger.merge(factored).delta, merger.merge(dense).delta, atol=1e-10, rtol=0
        )
    pact = PACTAligner(core_rank=3, task_rank=2)
    pf, pd = pact.preprocess(factored), pact.preprocess(dense)
    assert pf.is_factored and pf.records[-1].data["factored"]
    for a, b in zip(pf.task_vectors, pd.task_vectors):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    for n in ("a", "b", "c"):
        assert pf.records[-1].data["removed_energy"][n] == pytest.approx(
            pd.records[-1].data["removed_energy"][n], abs=1e-10
        )
    tb = torch.linalg.qr(torch.randn(16, 4, dtype=torch.float64))[0]
    for lr, tv in zip(factored.factored_task_vectors, dense.task_vectors):
        assert lr is not None
        assert intrusion_energy_low_rank(lr, tb) == pytest.approx(intrusion_energy(tv, tb))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank", [0, 1, 2])
def test_factored_paths_equal_dense_paths_below_the_budget(rank: int, dtype: torch.dtype) -> None:
    """Rank-deficient task vectors (rank 0..2 < TSV-M's budget min(m, n) / 3 = 5; summed
    rank <= 6 < 16): with rank-revealing backbones on both paths (the same numerical-rank
    rule, docs/lora.md) the factored TSV-M, Iso-C, Iso-CTS and PACT + each merger give
    the dense results, and keep the merged delta inside the tasks' spans."""
    g = torch.Generator().manual_seed(40 + rank)
    shape = (20, 16)
    base = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    lrs = [_low_rank(*shape, rank, 60 + t).map(lambda x: x.to(dtype)) for t in range(3)]
    lrs[2] = LowRank(torch.zeros(20, 0, dtype=dtype), torch.zeros(0, 16, dtype=dtype))  # untouched
    names = ["a", "b", "c"]
    factored = LayerBundle("w", base, lrs, names, seed=3)
    dense = LayerBundle("w", base, [lr.materialize() for lr in lrs], names, seed=3)
    atol = 1e-9 if dtype == torch.float64 else 2e-4
    scale = max(1.0, float(torch.linalg.matrix_norm(dense.task_vectors[0], ord=2)))
    span_b = torch.cat([lr.B for lr in lrs], dim=1).double()
    for merger in (TSVM(), IsoC(), IsoCTS()):
        got, want = merger.merge(factored).delta, merger.merge(dense).delta
        torch.testing.assert_close(got, want, atol=atol * scale, rtol=0)
        if rank == 0:
            assert not bool(torch.any(got != 0)) and not bool(torch.any(want != 0))
        else:  # the column space of the merge lies in the span of the B's
            q = torch.linalg.qr(span_b)[0]
            outside = got.double() - q @ (q.T @ got.double())
            assert float(outside.abs().max()) <= 10 * atol * scale
    pact = PACTAligner(core_rank=3, task_rank=2)
    pf, pd = pact.preprocess(factored), pact.preprocess(dense)
    assert pf.is_factored
    for a, b in zip(pf.task_vectors, pd.task_vectors):
        torch.testing.assert_close(a, b, atol=atol * scale, rtol=0)
    for merger in (TSVM(), IsoC(), IsoCTS()):
        torch.testing.assert_close(
            merger.merge(pf).delta, merger.merge(pd).delta, atol=atol * scale, rtol=0
        )


def test_factored_pact_gives_exact_zeros_when_the_protect_space_is_everything() -> None:
    """PACT's exact zeros (docs/pact.md) on the factored path: d = 3, K = 3, k = 1, T = 3
    (K + (T-1) k >= d), so every task's protect space is the whole space on the filtered
    side and the filtered factors form exactly 0 on both sides, as the dense path gives;
    so does every PACT preset's merge of them."""
    from pactframe_plugins.mergers.pact_presets import PRESETS

    base = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    names = ["a", "b", "c"]
    for side, b0, lrs in (
        ("right", base, [_low_rank(4, 3, 2, 70 + t) for t in range(3)]),
        ("left", base.T.contiguous(), [_low_rank(3, 4, 2, 70 + t) for t in range(3)]),
    ):
        factored = LayerBundle("w", b0, lrs, names, seed=3)
        dense = LayerBundle("w", b0, [lr.materialize() for lr in lrs], names, seed=3)
        pact = PACTAligner(core_rank=3, task_rank=1, side=side)
        pf, pd = pact.preprocess(factored), pact.preprocess(dense)
        assert pf.is_factored
        assert pf.records[-1].data[side]["protect_dims"] == {"a": 3, "b": 3, "c": 3}
        assert pd.records[-1].data[side]["protect_dims"] == {"a": 3, "b": 3, "c": 3}
        for a, b in zip(pf.task_vectors, pd.task_vectors):
            assert not bool(a.any()) and not bool(b.any())
        if side == "right":
            for preset in PRESETS:
                merged = preset(core_rank=3, task_rank=1).merge(factored).delta
                assert not bool(merged.any()), preset.name


def test_config_keys_for_adapters_are_validated(tmp_path) -> None:
    """models[].type, output.format and output.rank: bad values are config problems."""
    from pactframe.config import ConfigProblems, parse_config

    (tmp_path / "b.safetensors").write_bytes(b"")
    (tmp_path / "m.safetensors").write_bytes(b"")
    base = {
        "base": "b.safetensors",
        "models": [{"name": "m", "path": "m.safetensors", "type": "adapter"}],
        "merger": "average",
        "output": {"format": "lora"},
    }
    with pytest.raises(ConfigProblems) as err:
        parse_config(base, base_dir=tmp_path)
    text = str(err.value)
    assert "type: must be one of auto, full, lora; got 'adapter'" in text
    assert "output.format: lora needs a positive integer rank" in text
    ok = dict(base, models=[{"name": "m", "path": "m.safetensors", "type": "lora"}])
    ok["output"] = {"format": "lora", "rank": 4}
    spec = parse_config(ok, base_dir=tmp_path)
    assert spec.models[0].type == "lora" and spec.output.rank == 4
    assert spec.to_dict()["models"][0]["type"] == "lora"
    with pytest.raises(ConfigProblems, match="only used with output.format: lora"):
        parse_config(dict(ok, output={"rank": 4}), base_dir=tmp_path)


@pytest.mark.gpu
def test_factored_paths_on_cuda_equal_cpu() -> None:
    """The factored TSV-M, Iso-C, Iso-CTS and PACT give on CUDA what they give on CPU."""
    factored, _ = _bundles()
    cuda = factored.map_tensors(lambda x: x.to("cuda"))
    assert cuda.factored_task_vectors[0].device.type == "cuda"  # type: ignore[union-attr]
    for merger in (TSVM(), IsoC(), IsoCTS()):
        got = merger.merge(cuda).delta
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), merger.merge(factored).delta, atol=1e-9, rtol=0)
    pact = PACTAligner(core_rank=3, task_rank=2)
    for a, b in zip(pact.preprocess(cuda).task_vectors, pact.preprocess(factored).task_vectors):
        torch.testing.assert_close(a.cpu(), b, atol=1e-9, rtol=0)
