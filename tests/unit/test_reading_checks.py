"""The value checks of the reading layer (pactframe.sources, covariance_io): the
``nonfinite`` policy on every tensor read, and the covariance checks (finite,
symmetric, PSD within a tolerance), for files and in-memory inputs alike."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from pactframe.api import merge_state_dicts
from pactframe.config import ConfigProblems, parse_config
from pactframe.covariance_io import covariance_problem, psd_tolerance
from pactframe.errors import CheckpointError, NonFiniteError, NonFiniteWarning
from pactframe.sources import (
    DictCovarianceSource,
    FileTensorSource,
    StateDictSource,
    nonfinite_problem,
)


# ------------------------------------------------------------ nonfinite policy
def test_nonfinite_problem_counts_and_locates():
    t = torch.zeros(3, 4)
    t[1, 2] = float("nan")
    t[2, 0] = float("inf")
    t[2, 3] = float("-inf")
    assert nonfinite_problem(t) == "holds 1 NaN and 2 infinite value(s) (first at index [1, 2])"
    assert nonfinite_problem(torch.zeros(3)) is None
    assert nonfinite_problem(torch.tensor(float("nan"))).endswith("(first at index [])")
    assert nonfinite_problem(torch.arange(3)) is None  # integers are never non-finite
    half = torch.full((2,), 65504.0, dtype=torch.float16)
    assert nonfinite_problem(half) is None  # the float16 maximum is finite


@pytest.fixture
def poisoned(tmp_path):
    path = tmp_path / "ft.safetensors"
    w = torch.ones(2, 3, dtype=torch.bfloat16)
    w[0, 1] = float("nan")
    save_file({"w": w, "ids": torch.arange(3)}, str(path))
    return path


def test_file_source_policies(poisoned):
    source = FileTensorSource(poisoned, "model 'sst2'")
    with pytest.raises(NonFiniteError) as info:
        source.load("w")
    assert str(info.value).startswith(
        f"model 'sst2': tensor 'w' in {str(poisoned)!r} holds 1 NaN and 0 infinite value(s)"
    )
    assert torch.equal(source.load("ids"), torch.arange(3))
    source.nonfinite = "warn"
    with pytest.warns(NonFiniteWarning, match="model 'sst2': tensor 'w'"):
        assert torch.isnan(source.load("w")[0, 1])
    source.nonfinite = "ignore"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isnan(source.load("w")[0, 1])


def test_in_memory_merges_apply_the_policy_of_their_config():
    base = {"w": torch.zeros(2, 2)}
    bad = {"w": torch.tensor([[0.0, float("inf")], [0.0, 0.0]])}
    good = {"w": torch.ones(2, 2)}
    with pytest.raises(NonFiniteError, match="state dict of task 'b': tensor 'w' holds 0 NaN"):
        merge_state_dicts(base, {"a": good, "b": bad}, {"merger": "task_arithmetic"})
    with pytest.warns(NonFiniteWarning):
        out = merge_state_dicts(
            base, {"a": good, "b": bad}, {"merger": "task_arithmetic", "nonfinite": "warn"}
        )
    assert torch.isinf(out["w"][0, 1])


def test_the_policy_is_checked_everywhere():
    with pytest.raises(ConfigProblems, match="nonfinite: must be one of error, warn, ignore"):
        parse_config(
            {"base": "b", "models": ["m"], "merger": "average", "nonfinite": 0},
            check_files=False,
        )
    with pytest.raises(Exception, match="nonfinite"):
        StateDictSource({"w": torch.ones(1)}, "x", nonfinite="skip")
    spec = parse_config(
        {"base": "b", "models": ["m"], "merger": "average", "nonfinite": "ignore"},
        check_files=False,
    )
    assert spec.nonfinite == "ignore" and spec.to_dict()["nonfinite"] == "ignore"


# ------------------------------------------------------------ covariances
def _gram(n, d, seed=0, dtype=torch.float32):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x.T @ x / n


def test_real_gram_matrices_pass_even_singular_and_float32():
    assert covariance_problem(_gram(256, 32)) is None
    assert covariance_problem(_gram(8, 64)) is None  # rank 8 of 64, float32 rounding
    assert covariance_problem(_gram(100, 16, dtype=torch.float64).half()) is None
    assert covariance_problem(_gram(100, 16).bfloat16()) is None


@pytest.mark.parametrize(
    ("matrix", "needle"),
    [
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "smallest eigenvalue -1, largest 3"),
        (torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "not symmetric: max|C - C^T| = 0.5"),
        (torch.zeros(3, 3), "all zero"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "2 NaN and 0 infinite"),
        (torch.ones(2, 3), "not a square matrix"),
    ],
)
def test_bad_covariances_are_described(matrix, needle):
    problem = covariance_problem(matrix)
    assert problem is not None and needle in problem, problem


@pytest.mark.parametrize("scale", [1e-310, 1e-300, 1e300])
def test_the_checks_do_not_depend_on_the_scale(scale):
    # found by the property test below: a subnormal PSD matrix failed the Cholesky test
    c = _gram(4, 6, dtype=torch.float64)  # singular: rank 4 of 6
    assert covariance_problem(c * scale) is None
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    problem = covariance_problem(indefinite * scale)
    assert problem is not None and f"smallest eigenvalue {-scale:.3g}" in problem


def test_asymmetry_from_rounding_is_tolerated():
    c = _gram(64, 16).double()
    c[0, 1] += 1e-6 * float(c.abs().max())
    assert covariance_problem(c) is None


@settings(max_examples=60, deadline=None)
@example(eigenvalues=[0.0, 2.2250738585e-313], negative=0.0, seed=0)  # subnormal, found here
@example(eigenvalues=[0.0, 2.810883793252784e-163], negative=0.0, seed=0)  # norm underflow
@given(
    eigenvalues=st.lists(st.floats(0.0, 10.0), min_size=2, max_size=12),
    negative=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_psd_check_agrees_with_numpy_eigenvalues(eigenvalues, negative, seed):
    """Invariant: C = Q diag(lambda) Q^T with every lambda >= 0 passes; with its smallest
    eigenvalue replaced by -negative it is refused exactly when -negative lies clearly
    below -tol ||C||_F (numpy's eigvalsh as the independent reference)."""
    d = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    lam = np.array(eigenvalues)
    if lam.max() == 0.0:
        lam[0] = 1.0
    psd = (q * lam) @ q.T
    psd = 0.5 * (psd + psd.T)
    assert covariance_problem(torch.from_numpy(psd)) is None
    lam[np.argmin(lam)] = -negative
    c = (q * lam) @ q.T
    c = 0.5 * (c + c.T)
    # the reference works on c / max|c| too: numpy's norm of a matrix of 1e-163 entries
    # underflows to 0 (its squares are below the smallest double), a bound of 0
    unit = c / np.abs(c).max()
    lowest = float(np.linalg.eigvalsh(unit)[0])
    bound = psd_tolerance(d, torch.float64) * float(np.linalg.norm(unit))
    problem = covariance_problem(torch.from_numpy(c))
    if lowest < -2 * bound:
        assert problem is not None and "not positive semi-definite" in problem
    elif lowest > -0.5 * bound:
        assert problem is None, problem


def test_in_memory_covariances_are_checked_on_load_naming_task_and_tensor():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(3, 4, generator=g)}
    fts = {t: {"w": base["w"] + 0.1 * torch.randn(3, 4, generator=g)} for t in ("a", "b")}
    bad = -torch.eye(4)
    with pytest.raises(CheckpointError) as info:
        merge_state_dicts(
            base,
            fts,
            {"merger": "task_arithmetic"},
            covariances={"a": {"w": torch.eye(4)}, "b": {"w": bad}},
        )
    assert str(info.value).startswith(
        "Covariances of task 'b': entry 'w': it is not positive semi-definite"
    )
    source = DictCovarianceSource({"w": torch.eye(4)}, "covariances of task 'a'")
    assert source.check_all() == [] and torch.equal(source.load("w"), torch.eye(4))


def test_each_covariance_is_checked_once(tmp_path, monkeypatch):
    import pactframe.sources as sources_module
    from pactframe.covariance_io import save_covariances
    from pactframe.sources import FileCovarianceSource

    path = tmp_path / "cov.safetensors"
    covs = {"a": _gram(32, 4), "b": _gram(32, 6, seed=1)}
    save_covariances(path, covs, dict.fromkeys(covs, "linear"), dict.fromkeys(covs, 32))
    calls: list[int] = []

    def counting(matrix):
        calls.append(matrix.shape[0])
        return covariance_problem(matrix)

    monkeypatch.setattr(sources_module, "covariance_problem", counting)
    source = FileCovarianceSource(path)
    assert source.check_all() == [] and sorted(calls) == [4, 6]
    assert torch.equal(source.load("a"), covs["a"]) and torch.equal(source.load("b"), covs["b"])
    assert sorted(calls) == [4, 6]  # the merge's loads do not check again
    fresh = FileCovarianceSource(path)
    fresh.load("b")
    fresh.load("b")
    assert sorted(calls) == [4, 6, 6]  # unchecked up front: checked at its first load
