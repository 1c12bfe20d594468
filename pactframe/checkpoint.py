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
from pathlib import Path, PurePosixPath, PureWindowsPath
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
from pactframe.safetensors_header import (
    DTYPE_FROM_CODE,
    MAX_HEADER_BYTES,
    JsonProblem,
    TensorInfo,
    open_regular,
    parse_file,
    read_tensor,
    shown,
    strict_json,
)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: safetensors files in a model folder that are not weights (task-conditioned merges)
NON_WEIGHT_SAFETENSORS = frozenset({"task_modulators.safetensors"})
_MAX_HEADER_BYTES = MAX_HEADER_BYTES
#: largest index file read (a 1e6-tensor index is about 100 MB)
_MAX_INDEX_BYTES = 256 * 1024 * 1024

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


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header: ``({key: TensorInfo}, metadata)``; no
    tensor data is read (see :mod:`pactframe.safetensors_header` for every check)."""
    header = parse_file(path)
    return header.tensors, header.metadata


# ------------------------------------------------------------ model folders
def _is_hf_cache_blob(folder_real: Path, target_real: Path) -> bool:
    """``folder_real`` is ``<repo cache>/snapshots/<revision>`` and ``target_real`` a file
    directly in ``<repo cache>/blobs``: the Hugging Face hub cache layout, where every
    file of a snapshot is a symlink to ``../../blobs/<hash>``."""
    return (
        folder_real.parent.name == "snapshots"
        and target_real.parent == folder_real.parent.parent / "blobs"
    )


def resolve_in_folder(
    folder: Path,
    name: str,
    *,
    what: str,
    fix: str = "Copy the file into the folder (or point the config at the file itself).",
) -> Path:
    """``folder / name``, refused unless it stays inside ``folder``.

    ``name`` must be relative with no ``..`` part; after resolving symlinks the file
    must lie inside the folder, or be a blob of the same Hugging Face cache repo
    (:func:`_is_hf_cache_blob`). Returns the unresolved path (its name is kept).
    """
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name or pure.is_absolute() or PureWindowsPath(name).drive or ".." in pure.parts:
        raise CheckpointError(
            f"{what}: {shown(name)} is not a file name inside the model folder "
            f"{str(folder)!r} (absolute paths and '..' are refused, so a checkpoint cannot "
            "make pactframe read files elsewhere). Use the shard's file name relative to "
            "the folder."
        )
    path = folder / pure
    try:
        folder_real = folder.resolve()
        target_real = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, NUL bytes
        raise CheckpointError(
            f"{what}: {shown(name)} cannot be resolved inside the model folder "
            f"{str(folder)!r} ({type(exc).__name__}: {str(exc)[:60]}). {fix}"
        ) from None
    if target_real != folder_real and folder_real not in target_real.parents:
        if not _is_hf_cache_blob(folder_real, target_real):
            raise CheckpointError(
                f"{what}: {str(path)!r} is a symlink resolving outside the model folder "
                f"{str(folder)!r}; pactframe follows symlinks only inside the folder or from "
                f"a Hugging Face cache snapshot to its own blobs. {fix}"
            )
    return path


def read_json_in_folder(
    folder: Path, name: str, *, what: str, max_bytes: int, fix: str
) -> dict[str, Any]:
    """The JSON object in ``folder / name``, read as untrusted input: inside the folder
    (:func:`resolve_in_folder`), a regular file, at most ``max_bytes``, strict JSON
    (no duplicate keys, no NaN), an object. Every problem is a
    :class:`CheckpointError` naming ``what`` and the file, ending with ``fix``."""
    path = resolve_in_folder(folder, name, what=what)
    with open_regular(path) as f:
        try:
            raw = f.read(max_bytes + 1)
        except OSError as exc:
            raise CheckpointError(
                f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}."
            ) from exc
    if len(raw) > max_bytes:
        raise CheckpointError(
            f"{what}: {str(path)!r} is larger than {max_bytes} bytes. {fix}"
        )
    try:
        data = strict_json(raw)
    except JsonProblem as exc:
        raise CheckpointError(f"{what}: {str(path)!r} {exc}. {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{what}: {str(path)!r} holds a JSON {type(data).__name__}, not an object. {fix}"
        )
    return data


def _read_index(index: Path, folder: Path, role: str) -> dict[str, str]:
    """The validated ``weight_map`` of an index file: a non-empty object tensor -> file."""
    resolve_in_folder(folder, index.name, what=f"The index of the {role}")
    with open_regular(index) as f:
        try:
            raw = f.read(_MAX_INDEX_BYTES + 1)
        except OSError as exc:
            raise CheckpointError(
                f"The index {str(index)!r} of the {role} cannot be read: {exc.strerror or exc}."
            ) from exc
    problem = None
    data: Any = None
    if len(raw) > _MAX_INDEX_BYTES:
        problem = f"it is larger than {_MAX_INDEX_BYTES} bytes"
    else:
        try:
            data = strict_json(raw)
        except JsonProblem as exc:
            problem = f"it {exc}"
    if problem is None:
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(data, dict):
            problem = f"its top level is {type(data).__name__}, not an object"
        elif "weight_map" not in data:
            problem = f"it has no 'weight_map' (keys: {shown(sorted(data))})"
        elif not isinstance(weight_map, dict):
            problem = f"its 'weight_map' is a {type(weight_map).__name__}, not an object"
        elif not weight_map:
            problem = "its 'weight_map' is empty"
        else:
            bad = next((k for k, v in weight_map.items() if not isinstance(v, str)), None)
            if bad is not None:
                problem = (
                    f"its 'weight_map' maps tensor {shown(bad)} to "
                    f"{shown(weight_map[bad])}, not to a shard file name"
                )
    if problem is not None:
        raise CheckpointError(
            f"The index {str(index)!r} of the {role} cannot be used: {problem}. It must be JSON "
            "with a 'weight_map' object {tensor name: shard file name}; re-download the "
            "checkpoint or re-save it."
        )
    return weight_map  # type: ignore[return-value]


class CheckpointReader:
    """Lazy access to a safetensors checkpoint (single file or sharded folder).

    ``keys()``, ``info(key)`` come from the headers; ``load(key)`` reads one
    tensor from disk into a fresh CPU tensor. Every file's header goes through
    :func:`pactframe.safetensors_header.parse_file`; with an index, the tensors are
    exactly those of its ``weight_map``, each in the shard it names, and every file
    must lie inside the folder (:func:`resolve_in_folder`).
    """

    def __init__(self, path: str | os.PathLike[str], *, role: str = "checkpoint") -> None:
        self.path = Path(path)
        self.role = role
        self.weight_map: dict[str, str] | None = None
        self.files = self._locate()
        self._infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        for file in self.files:
            infos, metadata = read_header(file)
            self.metadata.update(metadata)
            for key, info in infos.items():
                if key in self._infos:
                    raise CheckpointError(
                        f"{self.role} {str(self.path)!r}: tensor {shown(key)} appears in both "
                        f"{self._infos[key].file.name} and {file.name}. Remove the duplicate shard."
                    )
                self._infos[key] = info
        if self.weight_map is not None:
            self._check_index()

    def _check_index(self) -> None:
        """Every indexed tensor is in the shard the index names, and nothing else is."""
        assert self.weight_map is not None
        index = self.path / INDEX_NAME
        for key, shard in self.weight_map.items():
            info = self._infos.get(key)
            if info is None or info.file != self.path / PurePosixPath(shard.replace("\\", "/")):
                where = "no shard" if info is None else info.file.name
                raise CheckpointError(
                    f"The index {str(index)!r} of the {self.role} puts tensor {shown(key)} in "
                    f"{shown(shard)}, but {where} holds it. The index does not match its "
                    "shards: re-download the checkpoint or re-save it."
                )
        unlisted = [k for k in self._infos if k not in self.weight_map]
        if unlisted:
            info = self._infos[unlisted[0]]
            raise CheckpointError(
                f"The index {str(index)!r} of the {self.role} does not list tensor "
                f"{shown(unlisted[0])} ({len(unlisted)} unlisted in all), which shard "
                f"{info.file.name} holds. The index does not match its shards: re-download the "
                "checkpoint or re-save it."
            )

    def _locate(self) -> list[Path]:
        p = self.path
        if not p.exists():
            raise CheckpointError(
                f"The {self.role} path {str(p)!r} does not exist. Check the path in the config "
                "(relative paths resolve against the config file's folder)."
            )
        if not p.is_dir():
            if p.suffix in PICKLE_SUFFIXES:
                raise pickle_refusal(p)
            if p.suffix != ".safetensors":
                raise CheckpointError(
                    f"The {self.role} {str(p)!r} is not a .safetensors file or a folder holding "
                    "safetensors shards."
                )
            return [p]  # parse_file refuses anything but a regular file
        index = p / INDEX_NAME
        if index.exists() or index.is_symlink():
            self.weight_map = _read_index(index, p, self.role)
            files = sorted(set(self.weight_map.values()))
            paths = [
                resolve_in_folder(p, f, what=f"The index {str(index)!r} of the {self.role}")
                for f in files
            ]
            missing = [f for f, path in zip(files, paths) if not os.path.exists(path)]
            if missing:
                raise CheckpointError(
                    f"The index {str(index)!r} names shard(s) that are missing: "
                    f"{', '.join(shown(m) for m in missing[:5])}. Re-download the checkpoint."
                )
            return paths
        what = f"The {self.role} folder"
        if (p / SINGLE_NAME).exists():
            return [resolve_in_folder(p, SINGLE_NAME, what=what)]
        shards = sorted(x for x in p.glob("*.safetensors") if x.name not in NON_WEIGHT_SAFETENSORS)
        if shards:
            return [resolve_in_folder(p, x.name, what=what) for x in shards]
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
            raise CheckpointError(f"{self.role} {str(self.path)!r} has no tensor {shown(key)}.")
        return self._infos[key]

    def load(self, key: str) -> torch.Tensor:
        """Read tensor ``key`` (a fresh, writable CPU tensor)."""
        return read_tensor(self.info(key), label=self.role)


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
    (config.json, tokenizer files, generation_config.json...).

    Only regular files are listed (a FIFO or device is never copied). A symlink is
    listed only when it resolves inside ``folder`` or, in a Hugging Face cache
    snapshot, to a blob of the same repo (:func:`resolve_in_folder`); a symlink
    leading anywhere else (a ``tokenizer_config.json`` pointing at a secret file)
    raises :class:`CheckpointError`, so its target is never copied into an output.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.suffix in (".safetensors", *PICKLE_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        if p.name in ("merge_report.json",):
            continue
        if p.is_symlink():
            resolve_in_folder(
                folder,
                p.name,
                what=f"The non-weight file {shown(p.name)} (copied into the output)",
                fix="Replace the link by a copy of the file, remove it, or set "
                "output.copy_files: false.",
            )
        if not p.is_file():
            continue
        out.append(p)
    return out
