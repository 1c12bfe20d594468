"""Value types: validation errors, truncation/reconstruction, task-conditioned
merges, and bundle rewriting. Expected values are worked by hand or with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pactframe.errors import InputError, PactframeError
from pactframe.types import Factorization, LayerBundle, MergedTensor, Record

f64 = torch.float64


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=f64)


def random_svd(m: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, n))
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return a, Factorization(t(u), t(s), t(vh))


# ------------------------------------------------------------------ Factorization
@pytest.mark.parametrize(
    ("u_shape", "s_shape", "vh_shape", "match"),
    [
        ((4, 2), (2, 1), (2, 3), "needs U \\(m, r\\), S \\(r,\\), Vh \\(r, n\\)"),
        ((4,), (2,), (2, 3), "needs U"),
        ((4, 3), (2,), (2, 3), "U has 3 columns, S has 2 values, Vh has 2 rows"),
        ((4, 2), (2,), (3, 3), "U has 2 columns, S has 2 values, Vh has 3 rows"),
    ],
)
def test_factorization_rejects_inconsistent_shapes(u_shape, s_shape, vh_shape, match):
    with pytest.raises(InputError, match=match):
        Factorization(torch.zeros(u_shape), torch.zeros(s_shape), torch.zeros(vh_shape))


def test_factorization_reconstructs_and_truncates_against_numpy():
    a, f = random_svd(6, 4)
    assert f.shape == (6, 4) and f.rank == 4
    assert torch.allclose(f.reconstruct(), t(a), atol=1e-12)
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    best2 = (u[:, :2] * s[:2]) @ vh[:2]
    assert torch.allclose(f.reconstruct(2), t(best2), atol=1e-12)
    f2 = f.truncate(2)
    assert f2.rank == 2 and f2.U.shape == (6, 2) and f2.Vh.shape == (2, 4)
    assert torch.allclose(f2.reconstruct(), t(best2), atol=1e-12)


@pytest.mark.parametrize(("requested", "kept"), [(0, 0), (-3, 0), (4, 4), (100, 4)])
def test_truncate_clips_the_rank(requested, kept):
    _, f = random_svd(6, 4)
    g = f.truncate(requested)
    assert g.rank == kept and g.shape == (6, 4)
    if kept == 0:
        assert torch.equal(g.reconstruct(), torch.zeros(6, 4, dtype=f64))


def test_hand_worked_reconstruction():
    f = Factorization(t([[1.0], [0.0]]), t([3.0]), t([[0.0, 1.0, 0.0]]))
    assert torch.equal(f.reconstruct(), t([[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]))


def test_bases_are_the_leading_singular_vectors():
    _, f = random_svd(5, 3)
    assert torch.equal(f.right_basis(2), f.Vh[:2].T)
    assert torch.equal(f.left_basis(2), f.U[:, :2])
    assert f.right_basis().shape == (3, 3)


def test_right_basis_of_a_non_orthonormal_factorization_is_refused():
    _, f = random_svd(5, 3)
    skewed = Factorization(f.U, f.S, 2.0 * f.Vh, orthonormal=False)
    with pytest.raises(InputError, match="needs an orthonormal factorization.*exact_svd"):
        skewed.right_basis()


# ------------------------------------------------------------------ LayerBundle
def bundle(**overrides) -> LayerBundle:
    kwargs = dict(
        name="enc.0.weight",
        base=torch.ones(3, 2, dtype=f64),
        task_vectors=[torch.full((3, 2), 0.5, dtype=f64), torch.full((3, 2), -1.0, dtype=f64)],
        task_names=["cars", "dtd"],
    )
    kwargs.update(overrides)
    return LayerBundle(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"task_vectors": [], "task_names": []}, "needs at least one task vector"),
        ({"task_names": ["cars"]}, "2 task vectors but 1 task names"),
        ({"task_names": ["cars", "cars"]}, "task names repeat: \\['cars', 'cars'\\]"),
        (
            {"task_vectors": [torch.zeros(3, 2), torch.zeros(2, 3)]},
            "task 'dtd' has shape \\(2, 3\\) but the base has \\(3, 2\\)",
        ),
        ({"covariances": [torch.eye(2)]}, "1 covariance entries for 2 tasks"),
        ({"input_axis": 2}, "input_axis must be 0 or 1; got 2"),
    ],
)
def test_bundle_validation_names_the_tensor(overrides, match):
    with pytest.raises(InputError, match=match) as info:
        bundle(**overrides)
    assert "'enc.0.weight'" in str(info.value)
    assert isinstance(info.value, PactframeError)


def test_bundle_accessors():
    b = bundle(covariances=[torch.eye(2, dtype=f64), None])
    assert b.num_tasks == 2 and b.is_matrix
    assert torch.equal(b.finetuned(0), torch.full((3, 2), 1.5, dtype=f64))
    assert torch.equal(b.finetuned(1), torch.zeros(3, 2, dtype=f64))
    assert torch.equal(b.covariance(0), torch.eye(2, dtype=f64)) and b.covariance(1) is None
    assert bundle().covariance(1) is None
    assert isinstance(b.task_vectors, tuple) and isinstance(b.task_names, tuple)


@pytest.mark.parametrize(
    ("shape", "is_matrix"), [((3, 2), True), ((2,), False), ((1, 5), False), ((2, 2, 2), False)]
)
def test_is_matrix(shape, is_matrix):
    b = LayerBundle("x", torch.zeros(shape), [torch.zeros(shape)], ["t"])
    assert b.is_matrix is is_matrix


def test_with_task_vectors_returns_a_copy_and_appends_the_record():
    b = bundle()
    new = [2 * tv for tv in b.task_vectors]
    record = Record("double", {"factor": 2})
    out = b.with_task_vectors(new, record=record)
    assert out is not b
    assert torch.equal(out.task_vectors[1], torch.full((3, 2), -2.0, dtype=f64))
    assert torch.equal(b.task_vectors[1], torch.full((3, 2), -1.0, dtype=f64))  # original untouched
    assert out.records == (record,) and b.records == ()
    assert out.base is b.base and out.name == b.name and out.task_names == b.task_names
    again = out.with_task_vectors(out.task_vectors)
    assert again.records == (record,)
    assert out.with_record(Record("x", {})).records == (record, Record("x", {}))


def test_with_task_vectors_revalidates_shapes():
    with pytest.raises(InputError, match="has shape \\(2,\\)"):
        bundle().with_task_vectors([torch.zeros(3, 2), torch.zeros(2)])


def test_map_tensors_applies_to_base_task_vectors_and_covariances():
    b = bundle(covariances=[torch.eye(2, dtype=f64), None])
    out = b.map_tensors(lambda x: x.to(torch.float32) * 2)
    assert out.base.dtype == torch.float32 and torch.equal(out.base, torch.full((3, 2), 2.0))
    assert torch.equal(out.task_vectors[0], torch.full((3, 2), 1.0))
    assert torch.equal(out.covariances[0], 2 * torch.eye(2)) and out.covariances[1] is None
    assert b.base.dtype == f64  # the original is untouched
    assert bundle().map_tensors(lambda x: x).covariances is None


# ------------------------------------------------------------------ MergedTensor
def test_plain_merge_task_delta_is_the_delta():
    m = MergedTensor(t([1.0, -2.0]))
    assert not m.is_task_conditioned
    assert torch.equal(m.task_delta("anything"), t([1.0, -2.0]))


def test_task_conditioned_merge_materialises_each_task_by_hand():
    delta = t([[2.0, -4.0], [1.0, 0.5]])
    masks = (
        torch.tensor([[True, False], [True, True]]),
        torch.tensor([[False, True], [False, False]]),
    )
    m = MergedTensor(delta, task_names=["a", "b"], task_masks=masks, task_scales=[0.5, 2.0])
    assert m.is_task_conditioned
    assert torch.equal(m.task_delta("a"), t([[1.0, 0.0], [0.5, 0.25]]))
    assert torch.equal(m.task_delta(1), t([[0.0, -8.0], [0.0, 0.0]]))
    with pytest.raises(InputError, match="Unknown task 'c'; this merge has \\['a', 'b'\\]"):
        m.task_delta("c")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task_names": ["a"]}, "needs task_names, task_masks and task_scales together"),
        (
            {
                "task_names": ["a"],
                "task_masks": [torch.ones(2, dtype=torch.bool)],
                "task_scales": [1.0, 2.0],
            },
            "differ in length",
        ),
        (
            {
                "task_names": ["a"],
                "task_masks": [torch.ones(3, dtype=torch.bool)],
                "task_scales": [1.0],
            },
            "The mask of task 'a' has shape \\(3,\\); the merged delta has \\(2,\\)",
        ),
    ],
)
def test_merged_tensor_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        MergedTensor(torch.zeros(2), **kwargs)


def test_apply_adds_in_delta_dtype_and_returns_base_dtype():
    base = torch.tensor([1.0, 1.0], dtype=torch.bfloat16)
    delta = torch.tensor([1e-3, -0.5], dtype=torch.float32)
    out = MergedTensor(delta).apply(base)
    assert out.dtype == torch.bfloat16
    expected = (torch.tensor([1.0, 1.0]) + delta).to(torch.bfloat16)
    assert torch.equal(out, expected)
