"""Reading checkpoints: lazy safetensors access and the model-folder rules.

:class:`CheckpointReader` accepts a single ``.safetensors`` file or a Hugging Face
style folder (``model.safetensors.index.json`` with its shards, a lone
``model.safetensors``, or any ``*.safetensors`` files). Only the JSON headers are
parsed up front; :meth:`CheckpointReader.load` reads one tensor's bytes with a plain
positioned read (no memory map), so a merge holds only the tensors it is working on.

Every file a folder names (index shards, JSON side files, non-weight files copied
into an output) must lie inside the folder (:func:`resolve_in_folder`). Pickle
checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are refused: loading them runs
arbitrary code.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from pactframe.errors import CheckpointError
from pactframe.safetensors_header import (
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
#: largest index file read (a 1e6-tensor index is about 100 MB)
_MAX_INDEX_BYTES = 256 * 1024 * 1024


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
        raise CheckpointError(f"{what}: {str(path)!r} is larger than {max_bytes} bytes. {fix}")
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
