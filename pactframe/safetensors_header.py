"""The one safetensors header validator every read goes through.

A safetensors file is ``8-byte little-endian header length N`` + ``N bytes of
UTF-8 JSON`` + the data section. :func:`parse_file` checks, before any tensor
byte is read or trusted:

- the path is a regular file (a FIFO, device or socket is refused without ever
  blocking on it: the file is opened non-blocking and checked with ``fstat``);
- ``N`` fits the file and a sane bound (100 MiB of header);
- the header is UTF-8 JSON whose top level is an object, with no duplicate key
  at any level and no ``NaN``/``Infinity`` constant;
- ``__metadata__``, when present, is an object of strings;
- every tensor entry is an object with a known ``dtype``, a ``shape`` of
  non-negative ints and ``data_offsets`` ``[begin, end]`` of non-negative ints,
  ``end - begin`` equal to ``prod(shape) * itemsize``;
- the tensors tile the data section exactly: sorted by offset, each starts where
  the previous one ended, the first at 0 and the last at the end of the file (no
  gap, no overlap, no trailing byte).

Messages name the file (and the tensor), say what was received (values cut to a
few dozen characters; raw file bytes are never printed) and what to do. See
``docs/security_reading.md``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import attrs
import torch

from pactframe.errors import CheckpointError

#: largest header pactframe parses (the reference implementation uses the same bound)
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: more dimensions than any real checkpoint tensor has
MAX_DIMS = 64
#: longest dimension accepted (torch sizes are int64; no real tensor comes near 2**48)
MAX_DIM = 2**48

#: safetensors dtype codes <-> torch dtypes (the ones pactframe reads)
DTYPE_FROM_CODE: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
ITEMSIZE: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_ENTRY_KEYS = ("dtype", "shape", "data_offsets")
_SHOWN = 60


def shown(value: Any, limit: int = _SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters (messages stay one short paragraph)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


@attrs.frozen
class TensorInfo:
    """Where one tensor lives and what it looks like (from the header only)."""

    key: str
    file: Path
    dtype_code: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in ``file``
    nbytes: int

    @property
    def dtype(self) -> torch.dtype:
        return DTYPE_FROM_CODE[self.dtype_code]

    @property
    def is_float(self) -> bool:
        return self.dtype_code in ("F64", "F32", "F16", "BF16")


@attrs.frozen
class SafetensorsHeader:
    """A validated header: tensors in file order, the metadata, the file's size."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    size: int


def open_regular(path: Path) -> io.FileIO:
    """Open ``path`` for reading, refusing anything but a regular file.

    The open is non-blocking, so a FIFO with no writer cannot hang the reader;
    ``fstat`` on the opened descriptor then decides (no race between check and use).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)[:60]
        raise CheckpointError(
            f"Cannot open {str(path)!r}: {reason}. Check the path and its permissions."
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = (
                "a folder"
                if stat.S_ISDIR(mode)
                else "a FIFO (named pipe)"
                if stat.S_ISFIFO(mode)
                else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "not a regular file"
            )
            raise CheckpointError(
                f"{str(path)!r} is {what}, not a regular file; pactframe reads checkpoints "
                "and covariances only from regular files. Point the config at the file itself."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


class JsonProblem(ValueError):
    """Why some bytes are not acceptable JSON: a predicate ("is not JSON (...)",
    "repeats the key 'w'") to follow the thing's name; never file content."""


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Surrogate(Exception):
    pass


def _unicode(text: str) -> None:
    """JSON's ``\\ud800`` escapes can spell lone surrogates, which are not Unicode (and
    cannot be printed or written back as UTF-8)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Surrogate() from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        _unicode(key)
        if isinstance(value, str):
            _unicode(value)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"the constant {name} is not JSON")


def strict_json(raw: bytes) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys (at any level), ``NaN``/``Infinity``
    and pathological nesting; raises :class:`JsonProblem`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonProblem(f"is not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _Duplicate as dup:
        raise JsonProblem(
            f"repeats the key {shown(dup.key)}, so two readers could disagree on which "
            "entry counts"
        ) from None
    except RecursionError:
        raise JsonProblem("is JSON nested too deeply") from None
    except _Surrogate:
        raise JsonProblem("is not JSON (a \\u escape spells a lone surrogate)") from None
    except json.JSONDecodeError as exc:
        raise JsonProblem(
            f"is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:  # NaN constants, integers too long to convert
        raise JsonProblem(f"is not JSON ({str(exc)[:_SHOWN]})") from None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_file(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Validate the header of the safetensors file ``path`` (no tensor data is read)."""
    path = Path(path)
    with open_regular(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"File {str(path)!r} is not a safetensors file: it is only {size} bytes "
                    "long (a safetensors file starts with an 8-byte header length). Re-download "
                    "or re-save it."
                )
            (hlen,) = struct.unpack("<Q", head)
            if hlen < 2 or hlen > MAX_HEADER_BYTES or 8 + hlen > size:
                # hlen is file content: never echo it (the file may not be a checkpoint at all)
                raise CheckpointError(
                    f"File {str(path)!r} is not a valid safetensors file: its first 8 bytes do "
                    f"not give a header length between 2 bytes and "
                    f"{min(MAX_HEADER_BYTES, max(size - 8, 0))} bytes (the file has {size} "
                    "bytes). Re-download or re-save it."
                )
            raw = f.read(hlen)
        except OSError as exc:
            raise CheckpointError(
                f"Cannot read checkpoint file {str(path)!r}: {exc.strerror or exc}."
            ) from exc
    if len(raw) != hlen:
        raise CheckpointError(
            f"File {str(path)!r} ended inside its header (read {len(raw)} of {hlen} bytes); "
            "it is truncated. Re-download or re-save it."
        )
    return _validate(path, raw, 8 + hlen, size)


def _validate(path: Path, raw: bytes, data_start: int, size: int) -> SafetensorsHeader:
    where = f"File {str(path)!r}"
    try:
        header = strict_json(raw)
    except JsonProblem as exc:
        raise CheckpointError(
            f"{where} is not a valid safetensors file: its header {exc}. Re-download or "
            "re-save it."
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{where} is not a valid safetensors file: its header must be a JSON object "
            f"{{tensor name: {{dtype, shape, data_offsets}}}}; got {_kind(header)}. "
            "Re-download or re-save it."
        )
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        bad = (
            _kind(metadata)
            if not isinstance(metadata, dict)
            else "an object with non-string values "
            + shown(
                {k: v for k, v in metadata.items() if not isinstance(v, str)},
            )
        )
        raise CheckpointError(
            f"{where}: the header's __metadata__ must be an object of strings "
            f"{{name: text}}; got {bad}. Re-save the checkpoint."
        )
    data_size = size - data_start
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for key, entry in header.items():
        tensor = f"{where}: tensor {shown(key)}"
        if not isinstance(entry, dict):
            raise CheckpointError(
                f"{tensor}: its header entry must be an object {{dtype, shape, data_offsets}}; "
                f"got {_kind(entry)}. Re-save the checkpoint."
            )
        missing = [k for k in _ENTRY_KEYS if k not in entry]
        if missing:
            raise CheckpointError(
                f"{tensor}: its header entry lacks {', '.join(missing)} (got keys "
                f"{shown(sorted(entry))}). Re-save the checkpoint."
            )
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(code, str) or code not in DTYPE_FROM_CODE:
            raise CheckpointError(
                f"{tensor} has dtype {shown(code)}, which pactframe does not read "
                f"(supported: {', '.join(sorted(DTYPE_FROM_CODE))}). Convert the checkpoint "
                "to one of those."
            )
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(_int(s) and 0 <= s <= MAX_DIM for s in shape)
        ):
            raise CheckpointError(
                f"{tensor}: its shape must be a list of at most {MAX_DIMS} non-negative "
                f"integers, each at most 2**48; got {shown(shape)}. The file is corrupt: "
                "re-download or re-save it."
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_int(o) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise CheckpointError(
                f"{tensor}: its data_offsets must be two non-negative integers [begin, end] "
                f"with begin <= end; got {shown(offsets)}. The file is corrupt: re-download or "
                "re-save it."
            )
        begin, end = offsets
        # numel, stopping once it cannot fit the file (guards shapes like [2**63, 2**63])
        numel = 0 if 0 in shape else 1
        if numel:
            for s in shape:
                numel *= s
                if numel > data_size:
                    break
        nbytes = numel * ITEMSIZE[code]
        if end > data_size or end - begin != nbytes:
            raise CheckpointError(
                f"{tensor} ({code}, shape {shown(shape)}) claims data bytes {shown(offsets)} "
                f"but needs {nbytes if nbytes <= data_size else 'more than ' + str(data_size)} "
                f"bytes inside a data section of {data_size} bytes; the file is truncated or "
                "corrupt. Re-download or re-save it."
            )
        infos[key] = TensorInfo(key, path, code, tuple(shape), data_start + begin, nbytes)
        spans.append((begin, end, key))
    spans.sort()
    position, previous = 0, None
    for begin, end, key in spans:
        if begin != position:
            if begin < position:
                problem = (
                    f"tensor {shown(key)} (bytes [{begin}, {end})) overlaps tensor "
                    f"{shown(previous)}, which ends at byte {position}"
                )
            else:
                problem = (
                    f"bytes [{position}, {begin}) before tensor {shown(key)} belong to no tensor"
                )
            raise CheckpointError(
                f"{where}: {problem}; the tensors must tile the data section exactly. The file "
                "is corrupt: re-download or re-save it."
            )
        position, previous = end, key
    if position != data_size:
        raise CheckpointError(
            f"{where}: the file has {data_size - position} byte(s) after the last tensor's data "
            f"(data section {data_size} bytes, tensors end at {position}); the tensors must "
            "tile the data section exactly. The file is corrupt: re-download or re-save it."
        )
    return SafetensorsHeader(path, infos, dict(metadata), size)


def read_tensor(info: TensorInfo, *, label: str | None = None) -> torch.Tensor:
    """Read one tensor's bytes (a positioned read, no memory map) into a fresh CPU tensor."""
    out = torch.empty(info.shape, dtype=info.dtype)
    if info.nbytes == 0:
        return out
    view = out.view(-1).view(torch.uint8).numpy()
    who = f"tensor {shown(info.key)}" + (f" of the {label}" if label else "")
    with open_regular(info.file) as f:
        try:
            f.seek(info.start)
            got = 0
            mem = memoryview(view.data).cast("B")
            while got < info.nbytes:
                n = f.readinto(mem[got:])
                if not n:
                    break
                got += n
        except OSError as exc:
            raise CheckpointError(
                f"Cannot read {who} from {str(info.file)!r}: {exc.strerror or exc}."
            ) from exc
    if got != info.nbytes:
        raise CheckpointError(
            f"File {str(info.file)!r} ended while reading {who} ({got} of {info.nbytes} bytes); "
            "the file was truncated after its header was read. Re-download or re-save it."
        )
    return out
