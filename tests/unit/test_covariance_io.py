"""The covariance file format v1: round trip, metadata, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pactframe.covariance import collect_covariances
from pactframe.covariance_io import (
    CovarianceEntry,
    load_covariance,
    read_covariance_header,
    read_covariance_source,
    save_covariances,
)
from pactframe.errors import CheckpointError, InputError

KEY_A = "model.layers.0.mlp.up_proj.weight"
KEY_B = "transformer.h.0.attn.c_attn.weight"


def _sample(tmp_path):
    path = tmp_path / "cov.safetensors"
    a = torch.eye(3) * 2.0
    b = torch.arange(4.0, dtype=torch.float64).reshape(2, 2)
    save_covariances(
        path,
        {KEY_A: a, KEY_B: b},
        {KEY_A: "linear", KEY_B: "conv1d"},
        {KEY_A: 7, KEY_B: 9},
        source="toy model, train split, 2 batches",
    )
    return path, a, b


def test_round_trip_keeps_tensors_dtypes_and_metadata(tmp_path):
    path, a, b = _sample(tmp_path)
    header = read_covariance_header(path)
    assert header == {
        KEY_A: CovarianceEntry((3, 3), "linear", 7),
        KEY_B: CovarianceEntry((2, 2), "conv1d", 9),
    }
    assert torch.equal(load_covariance(path, KEY_A), a)
    loaded_b = load_covariance(path, KEY_B)
    assert loaded_b.dtype == torch.float64 and torch.equal(loaded_b, b)
    assert read_covariance_source(path) == "toy model, train split, 2 batches"


def test_raw_metadata_follows_the_documented_format(tmp_path):
    """Another reader using safetensors directly sees exactly the documented keys."""
    path, _, _ = _sample(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pactframe-covariance"
    assert meta["version"] == "1"
    assert json.loads(meta["layouts"]) == {KEY_A: "linear", KEY_B: "conv1d"}
    assert json.loads(meta["num_samples"]) == {KEY_A: 7, KEY_B: 9}


def test_collected_file_round_trips(tmp_path):
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    result = collect_covariances(model, [torch.randn(3, 4), torch.randn(2, 4)])
    path = tmp_path / "task.safetensors"
    result.save(path, source="unit test")
    header = read_covariance_header(path)
    assert header == {
        "0.weight": CovarianceEntry((4, 4), "linear", 5),
        "2.weight": CovarianceEntry((5, 5), "linear", 5),
    }
    for key, cov in result.covariances.items():
        assert torch.equal(load_covariance(path, key), cov)


@pytest.mark.parametrize(
    ("covs", "layouts", "counts", "match"),
    [
        ({}, {}, {}, "empty"),
        ({"w": torch.zeros(2, 3)}, {"w": "linear"}, {"w": 1}, "square"),
        ({"w": torch.zeros(2, 2)}, {"w": "transposed"}, {"w": 1}, "layout"),
        ({"w": torch.zeros(2, 2)}, {"w": "linear"}, {"w": 0}, "num_samples"),
        ({"w": torch.zeros(2, 2)}, {"w": "linear"}, {}, "num_samples"),
    ],
)
def test_save_rejects_inconsistent_input(tmp_path, covs, layouts, counts, match):
    with pytest.raises(InputError, match=match):
        save_covariances(tmp_path / "x.safetensors", covs, layouts, counts)


def test_reading_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_covariance_header(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_covariance_header(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a pactframe covariance file"):
        read_covariance_header(plain)
    future = tmp_path / "future.safetensors"
    save_file(
        {"w": torch.zeros(2, 2)},
        str(future),
        metadata={"format": "pactframe-covariance", "version": "2"},
    )
    with pytest.raises(CheckpointError, match="version '2'"):
        load_covariance(future, "w")
    path, _, _ = _sample(tmp_path)
    with pytest.raises(CheckpointError, match="no entry 'nope'"):
        load_covariance(path, "nope")
