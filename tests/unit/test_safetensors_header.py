"""The safetensors header validator (pactframe.safetensors_header): every defect of
issue 18 (items 3, 5 and 7) is refused with a CheckpointError naming the file and
the tensor, and no message ever echoes raw file bytes."""

from __future__ import annotations

import os
import struct
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from pactframe.errors import CheckpointError
from pactframe.safetensors_header import MAX_HEADER_BYTES, parse_file, read_tensor
from tests._safetensors_craft import mutate_entry, raw_file, rewrite, split_file


@pytest.fixture
def good(tmp_path):
    """A well-formed file of three tensors (F32, BF16, I64)."""
    path = tmp_path / "m.safetensors"
    save_file(
        {
            "a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "b.bias": torch.ones(4, dtype=torch.bfloat16),
            "c.ids": torch.arange(3),
        },
        str(path),
        metadata={"format": "pt"},
    )
    return path


def _refused(path, *needles):
    with pytest.raises(CheckpointError) as info:
        parse_file(path)
    text = str(info.value)
    assert str(path) in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


def test_a_good_file_reads_like_the_safetensors_library(good):
    header = parse_file(good)
    assert header.metadata == {"format": "pt"}
    reference = load_file(str(good))
    assert sorted(header.tensors) == sorted(reference)
    for key, info in header.tensors.items():
        got = read_tensor(info)
        assert got.dtype == reference[key].dtype and torch.equal(got, reference[key])


def test_zero_size_tensors_and_an_empty_header_are_valid(tmp_path):
    path = tmp_path / "z.safetensors"
    save_file({"e": torch.zeros(0, 3), "s": torch.tensor(1.5)}, str(path))
    header = parse_file(path)
    assert header.tensors["e"].shape == (0, 3) and header.tensors["e"].nbytes == 0
    assert torch.equal(read_tensor(header.tensors["s"]), torch.tensor(1.5))
    (tmp_path / "empty.safetensors").write_bytes(raw_file({}))
    assert parse_file(tmp_path / "empty.safetensors").tensors == {}


# ------------------------------------------------------------ JSON shape (item 7)
@pytest.mark.parametrize(
    ("header", "kind"), [([1, 2], "a list"), (7, "a number"), ("x", "a string"), (None, "null")]
)
def test_header_json_that_is_not_an_object(tmp_path, header, kind):
    path = tmp_path / "h.safetensors"
    path.write_bytes(raw_file(header))
    _refused(path, "must be a JSON object", f"got {kind}")


def test_metadata_must_be_an_object_of_strings(good):
    header, data = split_file(good)
    rewrite(good, {**header, "__metadata__": ["format", "pt"]}, data)
    _refused(good, "__metadata__ must be an object of strings", "got a list")
    rewrite(good, {**header, "__metadata__": {"format": "pt", "n": 3}}, data)
    _refused(good, "__metadata__", "non-string values {'n': 3}")


@pytest.mark.parametrize(
    "entry",
    [5, "F32", ["F32", [2, 3], [0, 24]], {"dtype": "F32", "shape": [2, 3]}],
    ids=["number", "string", "list", "no-offsets"],
)
def test_a_tensor_entry_that_is_not_a_full_object(good, entry):
    header, data = split_file(good)
    header["a.weight"] = entry
    rewrite(good, header, data)
    _refused(good, "tensor 'a.weight'")


# ------------------------------------------------------------ shapes (item 7)
@pytest.mark.parametrize(
    "shape",
    [[-5, 0], [2**63, 0], [2**63, 2**63], [2.0, 3], [True, 3], "2x3", [[2], 3]],
    ids=["negative", "2**63-times-0", "2**63-squared", "float", "bool", "string", "nested"],
)
def test_shapes_must_be_small_non_negative_ints(good, shape):
    mutate_entry(good, "a.weight", shape=shape)
    text = _refused(good, "tensor 'a.weight'")
    assert "shape" in text


@pytest.mark.parametrize("shape", [[2**63, 0], [0, 2**49]], ids=["2**63", "2**49"])
def test_huge_dimensions_are_refused_even_with_zero_elements(tmp_path, shape):
    # zero elements, consistent offsets: only the dimension bound stops torch from
    # failing on a size it cannot represent
    path = tmp_path / "z.safetensors"
    path.write_bytes(raw_file({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}))
    _refused(path, "tensor 'w'", "its shape must be a list", "each at most 2**48")


def test_a_shape_whose_size_does_not_match_its_bytes(good):
    mutate_entry(good, "a.weight", shape=[3, 3])
    _refused(good, "tensor 'a.weight' (F32, shape [3, 3])", "needs 36 bytes")


# ------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", ["F8_E4M3", "f32", 4, None])
def test_unknown_dtypes_are_refused(good, dtype):
    mutate_entry(good, "a.weight", dtype=dtype)
    _refused(good, "tensor 'a.weight' has dtype", "does not read", "F32")


# ------------------------------------------------------------ offsets (item 3)
def test_negative_offsets_would_turn_header_bytes_into_weights(good):
    # main accepted this and merged the header's JSON text as weight values
    mutate_entry(good, "a.weight", data_offsets=[-256, -232])
    _refused(good, "tensor 'a.weight'", "data_offsets must be two non-negative integers")


@pytest.mark.parametrize(
    "offsets", [[24, 0], [0, 24, 48], [0.0, 24.0], "0-24", [0]], ids=str
)
def test_malformed_offsets(good, offsets):
    mutate_entry(good, "a.weight", data_offsets=offsets)
    _refused(good, "tensor 'a.weight'", "data_offsets")


def test_overlapping_tensors_are_refused(tmp_path):
    path = tmp_path / "o.safetensors"
    header = {
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path.write_bytes(raw_file(header, bytes(12)))
    _refused(path, "overlaps tensor 'x'", "tile the data section exactly")
    header["y"]["data_offsets"] = [0, 8]  # the same bytes twice
    path.write_bytes(raw_file(header, bytes(8)))
    _refused(path, "overlaps")


def test_gaps_and_trailing_bytes_are_refused(good):
    header, data = split_file(good)
    rewrite(good, header, data + b"\0" * 8)
    _refused(good, "8 byte(s) after the last tensor")
    for entry in header.values():
        if isinstance(entry, dict) and "data_offsets" in entry:
            entry["data_offsets"] = [o + 4 for o in entry["data_offsets"]]
    rewrite(good, header, bytes(4) + data)
    _refused(good, "bytes [0, 4) before tensor", "belong to no tensor")


def test_offsets_past_the_end_of_the_file(good):
    header, data = split_file(good)
    rewrite(good, header, data[:-4])
    _refused(good, "truncated or corrupt")


# ------------------------------------------------------------ JSON text
def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "d.safetensors"
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    path.write_bytes(raw_file(f'{{"w":{entry},"w":{entry}}}'.encode(), bytes(4)))
    _refused(path, "repeats the key 'w'")
    inner = '{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}'
    path.write_bytes(raw_file(f'{{"w":{inner}}}'.encode(), bytes(4)))
    _refused(path, "repeats the key 'dtype'")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"w": NaN}',
        b'{"w": Infinity}',
        b"{{{{",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"w": ' + b"9" * 5000 + b"}",
    ],
    ids=["nan", "infinity", "garbage", "deep-nesting", "huge-int"],
)
def test_bad_json_text(tmp_path, raw):
    path = tmp_path / "j.safetensors"
    path.write_bytes(raw_file(raw))
    _refused(path, "header")


def test_non_utf8_header_is_refused_without_echoing_bytes(tmp_path):
    path = tmp_path / "u.safetensors"
    path.write_bytes(raw_file(b'{"\xff\xfe": 1}'))
    text = _refused(path, "not UTF-8")
    assert "0xff" not in text and "\\xff" not in text


# ------------------------------------------------------------ header length
def test_short_files_and_insane_header_lengths(tmp_path):
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    _refused(tiny, "only 3 bytes long")
    secret = tmp_path / "secret.safetensors"
    content = b"root:x:0:0:root:/root:/bin/bash\n"
    secret.write_bytes(content)
    text = _refused(secret, "first 8 bytes do not give a header length")
    # main printed the first 8 bytes as an integer: file content must never be echoed
    assert str(struct.unpack("<Q", content[:8])[0]) not in text
    assert "root" not in text.replace(str(secret), "")
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 8) + b"{}" + bytes(30))
    _refused(huge, "header length")


def test_a_file_truncated_after_its_header_was_read(good):
    header = parse_file(good)
    blob = good.read_bytes()
    good.write_bytes(blob[:-4])
    last = max(header.tensors.values(), key=lambda i: i.start)
    with pytest.raises(CheckpointError, match="ended while reading tensor"):
        read_tensor(last)


# ------------------------------------------------------------ regular files only (item 5)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt():
        try:
            parse_file(fifo)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "parse_file blocked on a FIFO"
    assert isinstance(outcome[0], CheckpointError)
    assert "a FIFO (named pipe), not a regular file" in str(outcome[0])


@pytest.mark.skipif(sys.platform == "win32", reason="needs /dev/zero")
def test_devices_and_folders_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a device, not a regular file"):
        parse_file("/dev/zero")
    with pytest.raises(CheckpointError, match="is a folder, not a regular file"):
        parse_file(tmp_path)


def test_lone_surrogate_escapes_are_refused(tmp_path):
    # found by the fuzz test: Python's json accepts "\ud800" alone, the safetensors
    # library does not, and such a name cannot even be printed as UTF-8
    path = tmp_path / "s.safetensors"
    path.write_bytes(raw_file(b'{"__metadata__": {"\\ud800x": "y"}}'))
    _refused(path, "lone surrogate")
    path.write_bytes(raw_file(b'{"__metadata__": {"\\ud83d\\ude00": "ok"}}'))
    assert parse_file(path).metadata == {"\U0001f600": "ok"}
