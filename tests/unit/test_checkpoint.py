"""Checkpoint IO: lazy reading, atomic sharded writing, refusals with clear messages.

Written files are read back with safetensors' own loader (an independent reader)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from pactframe.errors import CheckpointError, ConfigError
from pactframe.io.reader import CheckpointReader, non_weight_files
from pactframe.io.units import parse_size
from pactframe.io.writer import CheckpointWriter, plan_shards


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(5, 3, generator=g),
        "b.half": torch.randn(7, generator=g).half(),
        "c.bf16": torch.randn(2, 2, 2, generator=g).bfloat16(),
        "d.ids": torch.arange(4, dtype=torch.int64),
        "e.empty": torch.zeros(0, 3),
        "f.scalar": torch.tensor(2.5, dtype=torch.float64),
    }


def test_reader_single_file_matches_safetensors(tmp_path):
    sd = _state()
    save_file(sd, str(tmp_path / "m.safetensors"))
    r = CheckpointReader(tmp_path / "m.safetensors")
    assert sorted(r.keys()) == sorted(sd)
    for k, v in sd.items():
        assert r.info(k).shape == tuple(v.shape) and r.info(k).dtype == v.dtype
        got = r.load(k)
        assert got.dtype == v.dtype and torch.equal(got, v)


def test_reader_sharded_folder_via_index(tmp_path):
    sd = _state()
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:3]}, str(tmp_path / "x-1.safetensors"))
    save_file({k: sd[k] for k in keys[3:]}, str(tmp_path / "x-2.safetensors"))
    wm = {k: ("x-1.safetensors" if i < 3 else "x-2.safetensors") for i, k in enumerate(keys)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    r = CheckpointReader(tmp_path)
    assert sorted(r.keys()) == keys
    assert all(torch.equal(r.load(k), sd[k]) for k in keys)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt"])
def test_pickle_files_are_refused_with_conversion_hint(tmp_path, suffix):
    path = tmp_path / f"pytorch_model{suffix}"
    path.write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match=r"pickle.*safetensors.*save_file"):
        CheckpointReader(path)
    with pytest.raises(CheckpointError, match=f"pytorch_model\\{suffix}"):
        CheckpointReader(tmp_path)  # a folder holding only a pickle


def test_missing_path_and_missing_shard(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointReader(tmp_path / "nope")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors"):
        CheckpointReader(tmp_path)


def test_truncated_and_garbage_files(tmp_path):
    save_file({"w": torch.ones(100)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-40])
    with pytest.raises(CheckpointError, match=r"'w'.*truncated or corrupt"):
        CheckpointReader(tmp_path / "t.safetensors")
    (tmp_path / "g.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(CheckpointError, match="not JSON"):
        CheckpointReader(tmp_path / "g.safetensors")


def test_writer_round_trip_sharded_with_index(tmp_path):
    sd = _state()
    layout = [(k, tuple(v.shape), v.dtype) for k, v in sd.items()]
    with CheckpointWriter(tmp_path / "out", layout, shard_size=24, metadata={"x": "1"}) as w:
        for k in reversed(list(sd)):  # any order
            w.write(k, sd[k])
        w.add_file("notes.txt", "hi")
        w.commit()
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in sd.values())
    loaded = {}
    for s in shards:
        loaded.update(load_file(str(out / s)))
    assert sorted(loaded) == sorted(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    assert (out / "notes.txt").read_text() == "hi"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left


def test_writer_single_shard_is_model_safetensors(tmp_path):
    sd = {"w": torch.randn(3, 3)}
    with CheckpointWriter(tmp_path / "o", [("w", (3, 3), torch.float32)]) as w:
        w.write("w", sd["w"])
        w.commit()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.safetensors"]
    assert torch.equal(load_file(str(tmp_path / "o" / "model.safetensors"))["w"], sd["w"])


def test_plan_shards_respects_max_size_and_oversized_tensors():
    layout = [
        ("a", (10,), torch.float32),
        ("b", (10,), torch.float32),
        ("c", (100,), torch.float32),
        ("d", (1,), torch.float32),
    ]
    shards = plan_shards(layout, 80)
    assert [[k for k, *_ in s] for s in shards] == [["a", "b"], ["c"], ["d"]]


def test_writer_failure_leaves_nothing(tmp_path):
    layout = [("w", (2,), torch.float32), ("v", (2,), torch.float32)]
    with pytest.raises(RuntimeError, match="boom"):
        with CheckpointWriter(tmp_path / "o", layout) as w:
            w.write("w", torch.ones(2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_commit_refuses_incomplete_output(tmp_path):
    layout = [("w", (2,), torch.float32), ("v", (2,), torch.float32)]
    with pytest.raises(CheckpointError, match="never written.*'v'"):
        with CheckpointWriter(tmp_path / "o", layout) as w:
            w.write("w", torch.ones(2))
            w.commit()
    assert list(tmp_path.iterdir()) == []


def test_writer_checks_shape_dtype_and_key(tmp_path):
    with CheckpointWriter(tmp_path / "o", [("w", (2,), torch.float32)]) as w:
        with pytest.raises(CheckpointError, match=r"'w'.*planned torch.float32 \[2\]"):
            w.write("w", torch.ones(2, dtype=torch.float16))
        with pytest.raises(CheckpointError, match="not part of the planned"):
            w.write("zz", torch.ones(2))


def test_existing_destination_needs_force(tmp_path):
    dest = tmp_path / "o"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(CheckpointError, match="already exists.*--force"):
        CheckpointWriter(dest, [("w", (1,), torch.float32)])
    with CheckpointWriter(dest, [("w", (1,), torch.float32)], force=True) as w:
        w.write("w", torch.ones(1))
        w.commit()
    assert sorted(p.name for p in dest.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2GB", 2 * 10**9),
        ("500MB", 5 * 10**8),
        ("1.5GiB", int(1.5 * 2**30)),
        (1024, 1024),
        ("10kb", 10**4),
        ("3 MiB", 3 * 2**20),
        ("77", 77),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["two GB", "-1GB", 0, "5XB", True])
def test_parse_size_rejects(bad):
    with pytest.raises(ConfigError, match="shard_size"):
        parse_size(bad)


def test_non_weight_files_skips_weights_and_index(tmp_path):
    for name in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
        ".hidden",
    ]:
        (tmp_path / name).write_text("x")
    assert [p.name for p in non_weight_files(tmp_path)] == ["config.json", "tokenizer.json"]
