"""Hand-made safetensors bytes for the tests of what pactframe refuses.

A safetensors file is ``<u64 little-endian header length> <header JSON> <data>``;
these helpers build one from a header object (or raw header bytes) and data bytes,
and re-write an existing file with a mutated header, so a test can plant exactly
one defect."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def raw_file(header: Any, data: bytes = b"", *, pad: bool = True) -> bytes:
    """The bytes of a safetensors file whose header is ``header`` (an object dumped as
    JSON, or ``bytes`` used as is) followed by ``data``."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def split_file(path: Path) -> tuple[dict[str, Any], bytes]:
    """``(header object, data bytes)`` of a well-formed safetensors file."""
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def rewrite(path: Path, header: Any, data: bytes | None = None) -> Path:
    """Overwrite ``path`` with ``header`` and ``data`` (default: the file's own data)."""
    if data is None:
        data = split_file(path)[1]
    Path(path).write_bytes(raw_file(header, data))
    return path


def mutate_entry(path: Path, key: str | None = None, **fields: Any) -> str:
    """Set ``fields`` (dtype, shape, data_offsets) of tensor ``key`` (default: the first
    tensor in the header) and re-write the file; returns the key."""
    header, data = split_file(path)
    if key is None:
        key = next(k for k in header if k != "__metadata__")
    header[key].update(fields)
    rewrite(path, header, data)
    return key
