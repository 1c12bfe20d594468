"""Checkpoint IO: lazy safetensors reading and atomic, sharded safetensors writing.

Reading (:class:`CheckpointReader`) accepts a single ``.safetensors`` file or a
Hugging Face style folder (``model.safetensors.index.json`` with its shards, a
lone ``model.safetensors``, or any ``*.safetensors`` files). Only the JSON
headers are parsed up front; :meth:`CheckpointReader.load` reads one tensor's
bytes with a plain positioned read (no memory map), so a merge holds only the
tensors it is working on.

Writing (:class:`CheckpointWriter`) is given the full layout (key, shape, dtype
of every output tensor) before any tensor exists. It assigns shards, writes
every shard's header at once and then writes each tensor's bytes at its offset
as soon as it arrives, in any order: no shard is ever buffered in memory. All
files go to a temporary folder beside the destination, renamed into place by
:meth:`CheckpointWriter.commit`; any exception (Ctrl-C included) removes the
temporary folder, so an interrupted merge leaves nothing behind.

Pickle checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are refused: loading
them runs arbitrary code.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from pactframe.errors import CheckpointError, ConfigError, short_repr
from pactframe.output_safety import (
    refuse_symlink,
    register_temporary,
    release_temporary,
    sweep_stale,
    temporary_path,
)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: safetensors files in a model folder that are not weights (task-conditioned merges)
NON_WEIGHT_SAFETENSORS = frozenset({"task_modulators.safetensors"})
_MAX_HEADER_BYTES = 100 * 1024 * 1024

#: safetensors dtype codes <-> torch dtypes
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
CODE_FROM_DTYPE: dict[torch.dtype, str] = {v: k for k, v in DTYPE_FROM_CODE.items()}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16"})


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def pickle_refusal(path: Path) -> CheckpointError:
    """The error for a pickle checkpoint, with the conversion recipe."""
    return CheckpointError(
        f"Checkpoint {str(path)!r} is a pickle file ({path.suffix}); pactframe reads only "
        "safetensors, because loading a pickle runs arbitrary code. Convert it once, in a "
        "Python you trust: `import torch, safetensors.torch as st; sd = torch.load(PATH, "
        "weights_only=True); st.save_file({k: v.contiguous() for k, v in sd.items()}, "
        "'model.safetensors')` (for a Hugging Face model: `AutoModel.from_pretrained(DIR)"
        ".save_pretrained(OUT, safe_serialization=True)`)."
    )


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
        return self.dtype_code in FLOAT_CODES


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a safetensors header: ``({key: TensorInfo}, metadata)``; no tensor data is read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"File {str(path)!r} is not a safetensors file: it is only {size} bytes long."
                )
            (hlen,) = struct.unpack("<Q", head)
            if hlen > _MAX_HEADER_BYTES or 8 + hlen > size:
                raise CheckpointError(
                    f"File {str(path)!r} is not a valid safetensors file: its header length "
                    f"({hlen} bytes) does not fit the file ({size} bytes). Re-download or "
                    "re-save it."
                )
            raw = f.read(hlen)
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint file {str(path)!r}: {exc}.") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"File {str(path)!r} is not a valid safetensors file: its header is not JSON "
            f"({exc}). Re-download or re-save it."
        ) from exc
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + hlen
    infos = {}
    for key, entry in header.items():
        try:
            code = entry["dtype"]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"File {str(path)!r}: the header entry of tensor {key!r} is malformed "
                f"({entry!r}). Re-save the checkpoint."
            ) from exc
        if code not in DTYPE_FROM_CODE:
            raise CheckpointError(
                f"File {str(path)!r}: tensor {key!r} has dtype {code!r}, which pactframe does "
                f"not read (supported: {', '.join(sorted(DTYPE_FROM_CODE))})."
            )
        numel = 1
        for s in shape:
            numel *= s
        expected = numel * dtype_size(DTYPE_FROM_CODE[code])
        if end - begin != expected or data_start + end > size:
            raise CheckpointError(
                f"File {str(path)!r}: tensor {key!r} ({code}, shape {list(shape)}) claims bytes "
                f"[{begin}, {end}) but needs {expected} bytes inside a file of {size} bytes; the "
                "file is truncated or corrupt."
            )
        infos[key] = TensorInfo(key, path, code, shape, data_start + begin, expected)
    return infos, {str(k): str(v) for k, v in metadata.items()}


class CheckpointReader:
    """Lazy access to a safetensors checkpoint (single file or sharded folder).

    ``keys()``, ``info(key)`` come from the headers; ``load(key)`` reads one
    tensor from disk into a fresh CPU tensor.
    """

    def __init__(self, path: str | os.PathLike[str], *, role: str = "checkpoint") -> None:
        self.path = Path(path)
        self.role = role
        self.files = self._locate()
        self._infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        for file in self.files:
            infos, metadata = read_header(file)
            self.metadata.update(metadata)
            for key, info in infos.items():
                if key in self._infos:
                    raise CheckpointError(
                        f"{self.role} {str(self.path)!r}: tensor {key!r} appears in both "
                        f"{self._infos[key].file.name} and {file.name}. Remove the duplicate shard."
                    )
                self._infos[key] = info

    def _locate(self) -> list[Path]:
        p = self.path
        if not p.exists():
            raise CheckpointError(
                f"The {self.role} path {str(p)!r} does not exist. Check the path in the config "
                "(relative paths resolve against the config file's folder)."
            )
        if p.is_file():
            if p.suffix in PICKLE_SUFFIXES:
                raise pickle_refusal(p)
            if p.suffix != ".safetensors":
                raise CheckpointError(
                    f"The {self.role} {str(p)!r} is not a .safetensors file or a folder holding "
                    "safetensors shards."
                )
            return [p]
        index = p / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"The index {str(index)!r} of the {self.role} cannot be read: {exc}. "
                    "It must be JSON with a 'weight_map' object {tensor name: shard file}."
                ) from exc
            files = sorted({str(v) for v in weight_map.values()})
            missing = [f for f in files if not (p / f).is_file()]
            if missing:
                raise CheckpointError(
                    f"The index {str(index)!r} names shard(s) that are missing: "
                    f"{', '.join(missing)}. Re-download the checkpoint."
                )
            return [p / f for f in files]
        if (p / SINGLE_NAME).is_file():
            return [p / SINGLE_NAME]
        shards = sorted(x for x in p.glob("*.safetensors") if x.name not in NON_WEIGHT_SAFETENSORS)
        if shards:
            return shards
        pickles = sorted(x for x in p.iterdir() if x.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise pickle_refusal(pickles[0])
        raise CheckpointError(
            f"The {self.role} folder {str(p)!r} holds no .safetensors file (expected "
            f"{SINGLE_NAME} or {INDEX_NAME} with its shards)."
        )

    def keys(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, key: object) -> bool:
        return key in self._infos

    def info(self, key: str) -> TensorInfo:
        if key not in self._infos:
            raise CheckpointError(f"{self.role} {str(self.path)!r} has no tensor {key!r}.")
        return self._infos[key]

    def load(self, key: str) -> torch.Tensor:
        """Read tensor ``key`` (a fresh, writable CPU tensor)."""
        info = self.info(key)
        out = torch.empty(info.shape, dtype=info.dtype)
        if info.nbytes == 0:
            return out
        view = out.view(-1).view(torch.uint8).numpy()
        try:
            with open(info.file, "rb") as f:
                f.seek(info.start)
                got = f.readinto(view.data)
        except OSError as exc:
            raise CheckpointError(
                f"Cannot read tensor {key!r} from {str(info.file)!r}: {exc}."
            ) from exc
        if got != info.nbytes:
            raise CheckpointError(
                f"File {str(info.file)!r} ended while reading tensor {key!r} ({got} of "
                f"{info.nbytes} bytes); the file is truncated."
            )
        return out


# --------------------------------------------------------------------- sizes
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(value: Any, *, what: str = "output.shard_size") -> int:
    """``2GB`` -> 2e9 bytes, ``500MiB`` -> 500 * 2**20, ints pass through (bytes)."""
    if isinstance(value, bool):
        raise ConfigError(
            f"{what} must be a size like '2GB' or a number of bytes; got {short_repr(value)}."
        )
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise ConfigError(
                f"{what} must be a size like '2GB', '500MB', '1.5GiB' or a number of bytes; "
                f"got {short_repr(value)}."
            )
        unit = (m.group(2) or "").lower().rstrip("b")
        number = float(m.group(1)) * _UNITS[unit]
        if not math.isfinite(number) or number >= 2**63:
            raise ConfigError(f"{what} is too large; got {short_repr(value)}.")
        size = int(number)
    if size <= 0:
        raise ConfigError(f"{what} must be positive; got {short_repr(value)}.")
    return size


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


# -------------------------------------------------------------------- writing
@attrs.frozen
class _Slot:
    file: int
    offset: int  # absolute byte offset in the shard file
    shape: tuple[int, ...]
    dtype: torch.dtype


def _header_bytes(entries: Mapping[str, dict[str, Any]], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    header.update(entries)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
    return raw


def plan_shards(
    layout: Iterable[tuple[str, tuple[int, ...], torch.dtype]], shard_size: int
) -> list[list[tuple[str, tuple[int, ...], torch.dtype]]]:
    """Greedy, in order: start a new shard when the next tensor would exceed ``shard_size``
    (a tensor larger than ``shard_size`` gets a shard of its own)."""
    shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
    used = 0
    for key, shape, dtype in layout:
        n = dtype_size(dtype)
        for s in shape:
            n *= s
        if shards[-1] and used + n > shard_size:
            shards.append([])
            used = 0
        shards[-1].append((key, tuple(shape), dtype))
        used += n
    return shards


class CheckpointWriter:
    """Atomic writer of a (sharded) safetensors checkpoint with a known layout.

    Use as a context manager::

        with CheckpointWriter(dest, layout, shard_size=2 * 10**9) as w:
            for key, tensor in ...:
                w.write(key, tensor)
            w.add_file("merge_report.json", text)
            w.commit()

    Leaving the block without :meth:`commit` (an exception, Ctrl-C) deletes the
    temporary folder; ``dest`` is untouched. ``force`` allows replacing an
    existing ``dest`` (only at commit time, after everything was written).
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        layout: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
        *,
        shard_size: int = 2 * 10**9,
        force: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.dest = Path(dest)
        self.force = force
        check_destination(self.dest, force=force)
        self.tmp = temporary_path(self.dest, "tmp")
        #: what :func:`~pactframe.output_safety.sweep_stale` found beside ``dest``
        self.swept: list[str] = []
        self._shards = plan_shards(list(layout), shard_size)
        self._metadata = {"format": "pt", **(metadata or {})}
        self._slots: dict[str, _Slot] = {}
        self._written: set[str] = set()
        self._handles: list[Any] = []
        self.shard_names = (
            [SINGLE_NAME]
            if len(self._shards) == 1
            else [
                f"model-{i + 1:05d}-of-{len(self._shards):05d}.safetensors"
                for i in range(len(self._shards))
            ]
        )
        self._committed = False

    # context management -------------------------------------------------
    def __enter__(self) -> CheckpointWriter:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.swept = sweep_stale(self.dest)
        self.tmp.mkdir()
        register_temporary(self.tmp)
        try:
            self._open_shards()
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._committed:
            self.abort()

    def _open_shards(self) -> None:
        for index, (name, shard) in enumerate(zip(self.shard_names, self._shards)):
            entries: dict[str, dict[str, Any]] = {}
            offset = 0
            for key, shape, dtype in shard:
                n = dtype_size(dtype)
                for s in shape:
                    n *= s
                entries[key] = {
                    "dtype": CODE_FROM_DTYPE[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, offset + n],
                }
                offset += n
            header = _header_bytes(entries, self._metadata)
            data_start = 8 + len(header)
            for key, shape, dtype in shard:
                self._slots[key] = _Slot(
                    index, data_start + entries[key]["data_offsets"][0], shape, dtype
                )
            f = open(self.tmp / name, "wb")
            self._handles.append(f)
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            f.truncate(data_start + offset)

    # writing ------------------------------------------------------------
    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (CPU, the planned shape and dtype) at its planned place."""
        slot = self._slots.get(key)
        if slot is None:
            raise CheckpointError(f"Tensor {key!r} is not part of the planned output layout.")
        if tuple(tensor.shape) != slot.shape or tensor.dtype != slot.dtype:
            raise CheckpointError(
                f"Tensor {key!r}: planned {slot.dtype} {list(slot.shape)}, got {tensor.dtype} "
                f"{list(tensor.shape)}."
            )
        if tensor.device.type != "cpu":
            raise CheckpointError(f"Tensor {key!r} must be on the CPU to be written.")
        f = self._handles[slot.file]
        f.seek(slot.offset)
        if tensor.numel():
            f.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().data)
        self._written.add(key)

    def add_file(self, name: str, data: str | bytes) -> Path:
        """Write an extra file (report, model card...) into the output folder."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def copy_file(self, source: Path, name: str | None = None) -> None:
        shutil.copy2(source, self.tmp / (name or source.name))

    @property
    def staging(self) -> Path:
        """The temporary folder (for writers of extra files, e.g. task modulators)."""
        return self.tmp

    def commit(self) -> Path:
        """Check every tensor was written, write the index, rename into place."""
        missing = [k for k in self._slots if k not in self._written]
        if missing:
            raise CheckpointError(
                f"Output incomplete: {len(missing)} planned tensor(s) were never written "
                f"(first: {missing[0]!r})."
            )
        for f in self._handles:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._handles = []
        if len(self._shards) > 1:
            total = sum(
                dtype_size(dt) * _numel(shape) for shard in self._shards for _, shape, dt in shard
            )
            weight_map = {key: self.shard_names[s.file] for key, s in sorted(self._slots.items())}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        check_destination(self.dest, force=self.force)  # again: it may have appeared meanwhile
        old = None
        if self.dest.exists():
            old = temporary_path(self.dest, "old")
            self.dest.rename(old)
        try:
            self.tmp.rename(self.dest)
        except BaseException:
            if old is not None:  # put the previous output back under its name
                old.rename(self.dest)
            raise
        self._committed = True
        release_temporary(self.tmp)
        if old is not None:  # best effort: a leftover is swept by the next run
            shutil.rmtree(old, ignore_errors=True)
        return self.dest

    def abort(self) -> None:
        for f in self._handles:
            try:
                f.close()
            except OSError:
                pass
        self._handles = []
        shutil.rmtree(self.tmp, ignore_errors=True)
        if not self.tmp.exists():
            release_temporary(self.tmp)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def check_destination(dest: Path, *, force: bool) -> None:
    """Refuse an existing destination unless ``force``; never a file in place of a folder,
    never a symbolic link (``--force`` included)."""
    refuse_symlink(dest)
    if dest.exists() and not force:
        raise CheckpointError(
            f"The output folder {str(dest)!r} already exists. Choose another path, or pass "
            "--force (force=True) to replace it once the new merge has been written."
        )
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(
            f"The output path {str(dest)!r} is a file, not a folder; remove it or choose "
            "another path."
        )


def non_weight_files(folder: Path) -> list[Path]:
    """Top-level files of a model folder other than weights and the weight index
    (config.json, tokenizer files, generation_config.json...)."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix in (".safetensors", *PICKLE_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        if p.name in ("merge_report.json",):
            continue
        out.append(p)
    return out
