"""Model folders (issue 18, items 2, 7 and 8): an index may only name files inside
its folder (the Hugging Face cache's snapshot -> blobs symlinks excepted), its
weight_map is an object of strings that matches the shards exactly, and the base
folder's non-weight files are never followed out of the folder."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch
from safetensors.torch import save_file

from pactframe.errors import CheckpointError
from pactframe.io.reader import INDEX_NAME, CheckpointReader, non_weight_files


def _sharded(folder, tensors=None, shards=2):
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tensors or {f"w{i}": torch.full((2, 2), float(i)) for i in range(4)}
    keys = list(tensors)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[s::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    return tensors, weight_map


def _write_index(folder, weight_map):
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _refused(folder, *needles):
    with pytest.raises(CheckpointError) as info:
        CheckpointReader(folder, role="base model")
    text = str(info.value)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


# ------------------------------------------------------------ index paths (item 2)
def test_index_paths_with_dotdot_are_refused(tmp_path):
    _sharded(tmp_path / "other-model")
    tensors, wm = _sharded(tmp_path / "model")
    # main silently merged the other model's weights
    outside = "../other-model/model-00001-of-00002.safetensors"
    _write_index(tmp_path / "model", dict.fromkeys(tensors, outside))
    _refused(tmp_path / "model", repr(outside), "'..' are refused")


def test_absolute_index_paths_are_refused_and_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2 hunter2 hunter2")
    tensors, _ = _sharded(tmp_path / "model")
    _write_index(tmp_path / "model", dict.fromkeys(tensors, str(secret)))
    text = _refused(tmp_path / "model", "absolute paths", "is not a file name inside the model")
    assert "hunter2" not in text
    assert str(int.from_bytes(b"hunter2 ", "little")) not in text


def test_a_shard_symlink_out_of_the_folder_is_refused(tmp_path):
    _sharded(tmp_path / "other")
    _, wm = _sharded(tmp_path / "model")
    link = tmp_path / "model" / "model-00001-of-00002.safetensors"
    link.unlink()
    link.symlink_to(tmp_path / "other" / "model-00001-of-00002.safetensors")
    _refused(tmp_path / "model", "is a symlink resolving outside the model folder")


def test_symlinks_inside_the_folder_are_followed(tmp_path):
    folder = tmp_path / "model"
    tensors, _ = _sharded(folder)
    (folder / "store").mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (folder / name).rename(folder / "store" / name)
        (folder / name).symlink_to(folder / "store" / name)
    reader = CheckpointReader(folder)
    assert all(torch.equal(reader.load(k), v) for k, v in tensors.items())


def _hf_cache(root, repo="models--org--tiny"):
    """The hub cache layout: snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    snapshot = root / repo / "snapshots" / "abc123"
    blobs = root / repo / "blobs"
    staging = root / f"staging-{repo}"
    tensors, _ = _sharded(staging)
    (staging / "config.json").write_text('{"model_type": "tiny"}')
    snapshot.mkdir(parents=True)
    blobs.mkdir(parents=True)
    for i, f in enumerate(sorted(staging.iterdir())):
        blob = blobs / f"{i:040x}"
        f.rename(blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot, tensors


def test_the_hugging_face_cache_layout_is_allowed(tmp_path):
    snapshot, tensors = _hf_cache(tmp_path)
    reader = CheckpointReader(snapshot)
    assert sorted(reader.keys()) == sorted(tensors)
    assert all(torch.equal(reader.load(k), v) for k, v in tensors.items())
    assert [p.name for p in non_weight_files(snapshot)] == ["config.json"]


def test_a_snapshot_link_into_another_repos_blobs_is_refused(tmp_path):
    snapshot, _ = _hf_cache(tmp_path)
    other, _ = _hf_cache(tmp_path, "models--org--other")
    shard = snapshot / "model-00001-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to((other / "model-00001-of-00002.safetensors").resolve())
    _refused(snapshot, "resolving outside the model folder")


# ------------------------------------------------------------ weight_map shape (item 7)
@pytest.mark.parametrize(
    ("index", "needle"),
    [
        ({"weight_map": ["model-00001-of-00002.safetensors"]}, "'weight_map' is a list"),
        ({"weight_map": {"w0": 3}}, "maps tensor 'w0' to 3"),
        ({"weight_map": {}}, "'weight_map' is empty"),
        ({"metadata": {}}, "has no 'weight_map'"),
        ([1, 2], "top level is list"),
    ],
    ids=["list", "non-string", "empty", "missing", "not-an-object"],
)
def test_malformed_weight_maps(tmp_path, index, needle):
    _sharded(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    _refused(tmp_path, needle, "must be JSON with a 'weight_map' object")


def test_index_json_with_duplicate_keys_is_refused(tmp_path):
    _sharded(tmp_path)
    name = "model-00001-of-00002.safetensors"
    (tmp_path / INDEX_NAME).write_text(f'{{"weight_map": {{"w0": "{name}", "w0": "{name}"}}}}')
    _refused(tmp_path, "repeats the key 'w0'")


def test_the_index_must_match_its_shards(tmp_path):
    tensors, wm = _sharded(tmp_path)
    # a tensor the shards hold but the index omits (a writer bug dropping the last tensor)
    _write_index(tmp_path, {k: v for k, v in wm.items() if k != "w3"})
    _refused(tmp_path, "does not list tensor 'w3'", "model-00002-of-00002.safetensors")
    # a tensor put in the wrong shard
    _write_index(tmp_path, {**wm, "w0": "model-00002-of-00002.safetensors"})
    _refused(tmp_path, "puts tensor 'w0' in 'model-00002-of-00002.safetensors'")
    # a tensor the index lists that no shard holds
    _write_index(tmp_path, {**wm, "ghost": "model-00001-of-00002.safetensors"})
    _refused(tmp_path, "puts tensor 'ghost'", "but no shard holds it")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_a_fifo_index_or_model_path_is_refused(tmp_path):
    _sharded(tmp_path / "m")
    (tmp_path / "m" / INDEX_NAME).unlink()
    os.mkfifo(tmp_path / "m" / INDEX_NAME)
    os.mkfifo(tmp_path / "lone.safetensors")
    errors: list[BaseException | None] = []

    def attempt(path):
        try:
            CheckpointReader(path)
            errors.append(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    for path in (tmp_path / "m", tmp_path / "lone.safetensors"):
        worker = threading.Thread(target=attempt, args=(path,), daemon=True)
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), f"reading {path} blocked on a FIFO"
    assert all(isinstance(e, CheckpointError) for e in errors), errors
    assert all("a FIFO (named pipe), not a regular file" in str(e) for e in errors)


# ------------------------------------------------------------ non-weight files (item 8)
def test_a_non_weight_symlink_out_of_the_base_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=hunter2")
    folder = tmp_path / "base"
    _sharded(folder)
    (folder / "tokenizer_config.json").symlink_to(secret)
    with pytest.raises(CheckpointError) as info:
        non_weight_files(folder)
    text = str(info.value)
    assert "'tokenizer_config.json'" in text and "resolving outside the model folder" in text
    assert "output.copy_files: false" in text and "hunter2" not in text


def test_non_weight_files_inside_the_folder_are_listed(tmp_path):
    folder = tmp_path / "base"
    _sharded(folder)
    (folder / "extra").mkdir()
    (folder / "extra" / "vocab.txt").write_text("a b")
    (folder / "vocab.txt").symlink_to(folder / "extra" / "vocab.txt")
    (folder / "config.json").write_text("{}")
    (folder / "dangling.json").symlink_to(folder / "nowhere.json")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.json")  # never copied (a copy would block)
    assert [p.name for p in non_weight_files(folder)] == ["config.json", "vocab.txt"]
