"""Fuzzing the safetensors header reader (issue 18): valid files with one or two
random defects (offsets, shapes, dtypes, JSON types, metadata, duplicate keys,
header length, flipped bytes, truncation, trailing bytes). Bounded inputs, so no
case can take long; the run stays well under 20 s."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from pactframe.errors import PactframeError
from pactframe.io.reader import CheckpointReader
from pactframe.safetensors_header import ITEMSIZE, parse_file, read_tensor
from tests._safetensors_craft import raw_file

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
odd_dims = st.sampled_from([-5, -1, 0, 1, 7, 2**31, 2**48 + 1, 2**63, 2**64, 1.5, True, "3", None])
odd_dtypes = st.sampled_from(["F8_E4M3", "I4", "f32", "", 1, None, ["F32"], {"F32": 1}])


@st.composite
def valid_files(draw):
    """``(header dict, data bytes)`` of a well-formed file: up to 4 small tensors laid
    out back to back in a random order, optional string metadata."""
    count = draw(st.integers(0, 4))
    names = draw(
        st.lists(st.text(min_size=1, max_size=6), min_size=count, max_size=count, unique=True)
    )
    names = [n for n in names if n != "__metadata__"]
    header: dict = {}
    strings = st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)
    metadata = draw(st.none() | strings)
    if metadata is not None:
        header["__metadata__"] = metadata
    order = draw(st.permutations(range(len(names))))
    offset = 0
    spans = {}
    for i in order:
        code = draw(st.sampled_from(sorted(ITEMSIZE)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        n = ITEMSIZE[code]
        for s in shape:
            n *= s
        spans[names[i]] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    for name in names:  # header order differs from data order
        header[name] = spans[name]
    data = draw(st.binary(min_size=offset, max_size=offset))
    return header, data


MUTATIONS = (
    "none",
    "offset",
    "shape",
    "dtype",
    "entry",
    "header",
    "metadata",
    "duplicate",
    "length",
    "flip",
    "truncate",
    "append",
)


@st.composite
def mutated_files(draw):
    header, data = draw(valid_files())
    keys = [k for k in header if k != "__metadata__"]
    raw_header: bytes | None = None
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=2)):
        if mutation in ("offset", "shape", "dtype", "entry", "duplicate") and not keys:
            continue
        key = draw(st.sampled_from(keys)) if keys else None
        if mutation == "offset":
            entry = header[key]
            offsets = entry["data_offsets"]
            if isinstance(offsets, list) and len(offsets) == 2 and draw(st.booleans()):
                offsets[:] = [o if type(o) is int else 0 for o in offsets]
                offsets[draw(st.integers(0, 1))] += draw(st.integers(-300, 300))
            else:
                entry["data_offsets"] = draw(json_values)
        elif mutation == "shape":
            shape = header[key]["shape"]
            if isinstance(shape, list) and shape and draw(st.booleans()):
                shape[draw(st.integers(0, len(shape) - 1))] = draw(odd_dims)
            else:
                header[key]["shape"] = draw(st.lists(odd_dims, max_size=3) | json_values)
        elif mutation == "dtype":
            header[key]["dtype"] = draw(odd_dtypes | st.sampled_from(sorted(ITEMSIZE)))
        elif mutation == "entry":
            header[key] = draw(json_values)
            keys.remove(key)
        elif mutation == "header":
            header = draw(json_values)
            keys = []
        elif mutation == "metadata":
            if isinstance(header, dict):
                header["__metadata__"] = draw(json_values)
        elif mutation == "duplicate":
            text = json.dumps(header)
            again = json.dumps({key: header[key]})[1:-1]
            raw_header = (text[:-1] + ", " + again + "}").encode()
    blob = raw_file(raw_header if raw_header is not None else header, data)
    tail = draw(st.sampled_from(["length", "flip", "truncate", "append", None]))
    if tail == "length":
        new = draw(st.integers(0, 2**64 - 1) | st.integers(0, len(blob)))
        blob = struct.pack("<Q", new) + blob[8:]
    elif tail == "flip" and len(blob) > 8:
        i = draw(st.integers(8, len(blob) - 1))
        blob = blob[:i] + bytes([blob[i] ^ draw(st.integers(1, 255))]) + blob[i + 1 :]
    elif tail == "truncate":
        blob = blob[: draw(st.integers(0, len(blob)))]
    elif tail == "append":
        blob += draw(st.binary(min_size=1, max_size=16))
    return blob


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "model.safetensors"


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(blob=mutated_files())
def test_the_header_reader_accepts_only_what_safetensors_reads_and_never_crashes(scratch, blob):
    """Invariant: on any (mutated) file the reader either refuses with a
    PactframeError or accepts, and then every tensor reads back equal to what the
    safetensors library itself reads from the same file. No other exception, no hang."""
    scratch.write_bytes(blob)
    try:
        header = parse_file(scratch)
    except PactframeError:
        event("refused")
        with pytest.raises(PactframeError):  # the folder reader refuses it the same way
            CheckpointReader(scratch)
        return
    event("accepted")
    with safe_open(str(scratch), framework="pt") as reference:
        assert sorted(reference.keys()) == sorted(header.tensors)
        assert (reference.metadata() or {}) == header.metadata
        for key, info in header.tensors.items():
            got = read_tensor(info)
            want = reference.get_tensor(key)
            assert got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape)
            assert torch.equal(got.view(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(valid=valid_files())
def test_every_well_formed_file_is_accepted_with_its_exact_bytes(scratch, valid):
    """Invariant: a well-formed file (any tensor order, zero-size tensors, unicode
    names, string metadata) is accepted, and each tensor's bytes are its data slice."""
    header, data = valid
    scratch.write_bytes(raw_file(header, data))
    parsed = parse_file(scratch)
    assert parsed.metadata == header.get("__metadata__", {})
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        got = read_tensor(parsed.tensors[key])
        assert tuple(got.shape) == tuple(entry["shape"])
        assert got.reshape(-1).view(torch.uint8).numpy().tobytes() == data[begin:end]


shard_names = st.sampled_from(
    ["model-1.safetensors", "../model-1.safetensors", "/etc/hostname", "sub/x.safetensors",
     "", ".", "a\0b", "z" * 300, "C:\\x", "model-1.safetensors/"]
) | st.text(max_size=8)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("indexed")
    save_file({"w": torch.ones(2), "b": torch.zeros(3)}, str(folder / "model-1.safetensors"))
    return folder


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    index=json_values
    | st.fixed_dictionaries(
        {"weight_map": st.dictionaries(st.sampled_from(["w", "b", "x"]), shard_names | json_values)}
    )
)
def test_the_index_reader_refuses_or_reads_only_inside_the_folder(model_folder, index):
    """Invariant: any index JSON gives a PactframeError or a reader whose files all lie
    inside the folder and whose tensors are exactly the weight_map's keys."""
    (model_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    try:
        reader = CheckpointReader(model_folder)
    except PactframeError:
        return
    root = model_folder.resolve()
    assert all(root in f.resolve().parents for f in reader.files)
    assert sorted(reader.keys()) == sorted(index["weight_map"])
