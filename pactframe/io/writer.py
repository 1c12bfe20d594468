"""Writing checkpoints: an atomic, sharded safetensors writer with a known layout.

:class:`CheckpointWriter` is given the full layout (key, shape, dtype of every
output tensor) before any tensor exists. It assigns shards, writes every shard's
header at once and then writes each tensor's bytes at its offset as soon as it
arrives, in any order: no shard is ever buffered in memory. All files go to a
temporary folder beside the destination, renamed into place by
:meth:`CheckpointWriter.commit`; any exception (Ctrl-C included) removes the
temporary folder, so an interrupted merge leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from pactframe.errors import CheckpointError
from pactframe.io.reader import INDEX_NAME, SINGLE_NAME
from pactframe.io.units import CODE_FROM_DTYPE, dtype_size, numel
from pactframe.output_safety import (
    refuse_symlink,
    register_temporary,
    release_temporary,
    sweep_stale,
    temporary_path,
)

#: largest shard when nobody says otherwise (the config's ``output.shard_size``: 2GB)
DEFAULT_SHARD_SIZE = 2 * 10**9


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
        n = dtype_size(dtype) * numel(shape)
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
        shard_size: int = DEFAULT_SHARD_SIZE,
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
                n = dtype_size(dtype) * numel(shape)
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
                dtype_size(dt) * numel(shape) for shard in self._shards for _, shape, dt in shard
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
