"""``Decomposer.decompose_many``: the T task vectors of one tensor factorized together
(issue 13: one batched call of each kernel on a GPU instead of T). The reference is
``decompose`` called once per matrix with the same generator."""

from __future__ import annotations

import pytest
import torch
from pactframe_plugins.decomposers.exact_svd import ExactSVD, batches
from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD
from pactframe_plugins.mergers._svd import decompose_tasks

from pactframe import Decomposer, Factorization


def _matrices(device: str = "cpu", count: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(40, 30, generator=g, dtype=torch.float64).to(device) for _ in range(count)]


def _gens(count: int = 3) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(10 + i) for i in range(count)]


def _close(a: Factorization, b: Factorization, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a.S.cpu(), b.S.cpu(), rtol=tol, atol=tol)
    torch.testing.assert_close(a.reconstruct().cpu(), b.reconstruct().cpu(), rtol=tol, atol=tol)


class _Truncating(Decomposer):
    """A third-party decomposer without its own decompose_many (the contract's default)."""

    name = "truncating"

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        return ExactSVD().decompose(matrix, rank)


def test_the_default_is_decompose_once_per_matrix_with_its_generator():
    mats = _matrices()
    many = RandomizedSVD(power_iterations=1).decompose_many(mats, 5, generators=_gens())
    for m, g, f in zip(mats, _gens(), many):
        _close(f, RandomizedSVD(power_iterations=1).decompose(m, 5, generator=g), tol=0.0)
    third = _Truncating()
    for m, f in zip(mats, third.decompose_many(mats, 4)):
        _close(f, ExactSVD().decompose(m, 4), tol=0.0)
    with pytest.raises(ValueError, match="3 matrices but 2 generators"):
        third.decompose_many(mats, 4, generators=_gens(2))


@pytest.mark.parametrize("rank", [4, 12, None])
def test_batched_kernels_give_the_per_matrix_factors(rank):
    """The batched paths (what runs on a GPU), called on the CPU: one (T, m, n) SVD and
    one batched sketch equal the per-matrix ones up to rounding."""
    mats = _matrices()
    for m, f in zip(mats, ExactSVD()._batched(mats, rank)):
        _close(f, ExactSVD().decompose(m, rank))
    rsvd = RandomizedSVD(tolerance=0.0)
    for m, g, f in zip(mats, _gens(), rsvd._sketched(mats, rank, _gens())):
        _close(f, rsvd.decompose(m, rank, generator=g))


def test_the_cpu_loops_and_only_equal_layouts_batch():
    """On the CPU no batch is built (same flops, T more matrices in memory); mixed
    shapes never batch."""
    assert not batches(_matrices())
    assert not batches(_matrices(count=1))
    built = []

    def matrix(t):
        built.append(t)
        return _matrices()[t]

    found = decompose_tasks(ExactSVD(), matrix, [0, 2], 3, [None, None], torch.device("cpu"))
    assert built == [0, 2] and sorted(found) == [0, 2]
    _close(found[2], ExactSVD().decompose(_matrices()[2], 3))


@pytest.mark.gpu
@pytest.mark.parametrize("decomposer", [ExactSVD(), RandomizedSVD()], ids=lambda d: d.name)
def test_cuda_batches_and_agrees_with_the_cpu(decomposer):
    mats = _matrices("cuda")
    assert batches(mats)
    found = decompose_tasks(
        decomposer, lambda t: mats[t], [0, 1, 2], 12, _gens(), torch.device("cuda")
    )
    for t, m in enumerate(_matrices()):
        _close(found[t], decomposer.decompose(m, 12, generator=_gens()[t]), tol=1e-8)
