"""The on-disk form of task-conditioned merges (EMR) and their materialisation.

A task-conditioned merger returns, per tensor, a shared ``delta`` plus per-task
boolean masks ``m_t`` and scalar scales ``s_t`` (:class:`~pactframe.types.MergedTensor`).
The output folder then holds the plain merged model ``base + delta`` and
``task_modulators.safetensors``:

- ``<key>::mask``: ``uint8`` ``(T, ceil(numel / 8))``, task ``t``'s mask over the
  flattened tensor, bits packed big-endian (``numpy.packbits``);
- ``<key>::scale``: ``float32`` ``(T,)``, the scales ``s_t``;
- metadata: ``format = "pactframe-task-modulators"``, ``version = "1"``,
  ``tasks`` (JSON list, the row order), ``shapes`` (JSON ``{key: shape}``).

Task ``t``'s model is ``base + s_t * (m_t * delta)`` for every tensor listed in
the file, and the merged tensor itself for every other tensor (their delta is
not task-conditioned); :func:`materialize` writes it as a full checkpoint.
Tensors are appended to a raw data file as they arrive and the safetensors file
is assembled at the end, so nothing is buffered in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pactframe.errors import CheckpointError, InputError
from pactframe.io.reader import CheckpointReader, non_weight_files, read_header
from pactframe.io.units import numel
from pactframe.io.writer import DEFAULT_SHARD_SIZE, CheckpointWriter
from pactframe.output_safety import check_output

MODULATOR_FILE = "task_modulators.safetensors"  # in io.reader.NON_WEIGHT_SAFETENSORS
FORMAT_NAME = "pactframe-task-modulators"
FORMAT_VERSION = "1"


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    return np.packbits(mask.detach().to("cpu", torch.bool).reshape(-1).numpy())


def unpack_mask(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    bits = np.unpackbits(packed.numpy(), count=numel(shape))
    return torch.from_numpy(bits.astype(bool)).reshape(tuple(shape))


class ModulatorWriter:
    """Streams per-tensor masks and scales into ``folder / task_modulators.safetensors``."""

    def __init__(self, folder: Path, task_names: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.task_names = tuple(task_names)
        self._raw_path = self.folder / (MODULATOR_FILE + ".part")
        self._raw: BinaryIO | None = None
        self._entries: dict[str, dict] = {}
        self._shapes: dict[str, list[int]] = {}
        self._offset = 0

    @property
    def empty(self) -> bool:
        return not self._entries

    def add(
        self,
        key: str,
        shape: Sequence[int],
        task_names: Sequence[str],
        masks: Sequence[torch.Tensor],
        scales: Sequence[float],
    ) -> None:
        if tuple(task_names) != self.task_names:
            raise InputError(
                f"Tensor {key!r}: the merger returned modulators for tasks {list(task_names)}; "
                f"the merge has {list(self.task_names)} (same order expected)."
            )
        if self._raw is None:
            self._raw = open(self._raw_path, "wb")
        raw = self._raw
        packed = np.stack([pack_mask(m) for m in masks])
        scale = np.asarray([float(s) for s in scales], dtype="<f4")
        for suffix, arr, code in (("::mask", packed, "U8"), ("::scale", scale, "F32")):
            data = np.ascontiguousarray(arr).tobytes()
            self._entries[key + suffix] = {
                "dtype": code,
                "shape": list(arr.shape),
                "data_offsets": [self._offset, self._offset + len(data)],
            }
            raw.write(data)
            self._offset += len(data)
        self._shapes[key] = [int(s) for s in shape]

    def finish(self, order: Sequence[str] | None = None) -> Path | None:
        """Assemble the safetensors file (header + the raw data); ``None`` if nothing was added.

        ``order``: tensor keys in the order the file lists them (e.g. the plan's), so
        the file's bytes do not depend on the order tensors arrived in; keys not in
        ``order`` follow in arrival order. The data is copied segment by segment.
        """
        if self._raw is None:
            return None
        self._raw.close()
        arrival = list(self._shapes)
        keys = arrival
        if order is not None:
            rank = {k: i for i, k in enumerate(order)}
            came = {k: i for i, k in enumerate(arrival)}
            keys = sorted(arrival, key=lambda k: (rank.get(k, len(rank)), came[k]))
        entries: dict[str, dict] = {}
        segments: list[tuple[int, int]] = []
        offset = 0
        for key in keys:
            for suffix in ("::mask", "::scale"):
                entry = self._entries[key + suffix]
                begin, end = entry["data_offsets"]
                entries[key + suffix] = {**entry, "data_offsets": [offset, offset + end - begin]}
                segments.append((begin, end - begin))
                offset += end - begin
        header = {
            "__metadata__": {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "tasks": json.dumps(list(self.task_names)),
                "shapes": json.dumps(self._shapes, sort_keys=True),
            },
            **entries,
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        out = self.folder / MODULATOR_FILE
        with open(out, "wb") as f, open(self._raw_path, "rb") as src:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            if keys == arrival:
                shutil.copyfileobj(src, f, 16 * 2**20)
            else:
                for begin, length in segments:
                    src.seek(begin)
                    while length > 0:
                        chunk = src.read(min(length, 16 * 2**20))
                        if not chunk:
                            raise CheckpointError(
                                f"{str(self._raw_path)!r} ended early while assembling the "
                                "task modulators."
                            )
                        f.write(chunk)
                        length -= len(chunk)
        self._raw_path.unlink()
        return out

    def close(self) -> None:
        if self._raw is not None and not self._raw.closed:
            self._raw.close()


class ModulatorReader:
    """Reads ``task_modulators.safetensors`` back."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(
                f"{str(self.path)!r} does not exist: the merge in this folder is not task-"
                "conditioned (only mergers such as emr write per-task modulators)."
            )
        infos, meta = read_header(self.path)
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{str(self.path)!r} is not a version-{FORMAT_VERSION} {FORMAT_NAME} file "
                f"(format {meta.get('format')!r}, version {meta.get('version')!r})."
            )
        tasks: Any = None
        shapes: Any = None
        problem: str | None = None
        try:
            tasks = json.loads(meta["tasks"])
            shapes = json.loads(meta["shapes"])
        except (KeyError, ValueError, RecursionError) as exc:
            problem = f"its 'tasks'/'shapes' metadata is missing or not JSON ({type(exc).__name__})"
        ok_tasks = isinstance(tasks, list) and all(isinstance(t, str) for t in tasks) and tasks
        ok_shapes = isinstance(shapes, dict) and all(
            isinstance(v, list) and all(type(d) is int and d >= 0 for d in v)
            for v in shapes.values()
        )
        if problem is None and not (ok_tasks and ok_shapes):
            problem = "its 'tasks' must be a list of task names and 'shapes' {tensor: [dims]}"
        if problem is None:
            n = len(tasks)
            for key, shape in shapes.items():
                mask, scale = infos.get(key + "::mask"), infos.get(key + "::scale")
                if (
                    mask is None
                    or scale is None
                    or mask.shape != (n, (numel(shape) + 7) // 8)
                    or scale.shape != (n,)
                    or mask.dtype_code != "U8"
                    or scale.dtype_code != "F32"
                ):
                    problem = f"the modulators of tensor {key[:60]!r} do not match 'shapes'"
                    break
        if problem is not None:
            raise CheckpointError(
                f"{str(self.path)!r} is not a usable task-modulator file: {problem}. "
                "Re-run the merge that wrote it."
            )
        self.task_names: tuple[str, ...] = tuple(tasks)
        self.shapes: dict[str, list[int]] = shapes
        self._reader = CheckpointReader(self.path, role="task modulators")

    def task_index(self, task: str) -> int:
        if task not in self.task_names:
            raise InputError(
                f"Unknown task {task!r}: this merge holds modulators for "
                f"{', '.join(self.task_names)}. Pass one of those to --task."
            )
        return self.task_names.index(task)

    def modulator(self, key: str, task: str) -> tuple[torch.Tensor, float] | None:
        """``(mask, scale)`` of ``task`` for tensor ``key``, or ``None`` if not conditioned."""
        if key not in self.shapes:
            return None
        t = self.task_index(task)
        packed = self._reader.load(key + "::mask")[t]
        scale = float(self._reader.load(key + "::scale")[t])
        return unpack_mask(packed, self.shapes[key]), scale


def materialize(
    merged_dir: str | os.PathLike[str],
    task: str,
    dest: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    force: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> Path:
    """Write task ``task``'s full checkpoint from a task-conditioned merge.

    ``base`` defaults to the base path recorded in ``merge_report.json``. Each
    conditioned tensor becomes ``base + s_t * (m_t * (merged - base))``, computed in
    float32 (float64 for float64 tensors) and cast to the merged tensor's dtype.
    """
    merged_dir = Path(merged_dir)
    reader = ModulatorReader(merged_dir / MODULATOR_FILE)
    reader.task_index(task)
    if base is None:
        report = merged_dir / "merge_report.json"
        try:
            base = json.loads(report.read_text())["config"]["base"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"Cannot find the base model of {str(merged_dir)!r} in {str(report)!r} ({exc}); "
                "pass it explicitly with --base PATH."
            ) from exc
    check_output(dest, [("the merged model", merged_dir), ("the base model", Path(base))])
    merged = CheckpointReader(merged_dir, role="merged model")
    base_reader = CheckpointReader(Path(base), role="base model")
    layout = [(k, merged.info(k).shape, merged.info(k).dtype) for k in merged.keys()]
    for key in reader.shapes:
        if key not in merged or key not in base_reader:
            raise CheckpointError(
                f"Tensor {key!r} has task modulators but is missing from the merged model or "
                f"the base ({str(base)!r}); is --base the model this merge was made from?"
            )
    with CheckpointWriter(
        dest, layout, shard_size=shard_size, force=force, metadata={"pactframe_task": task}
    ) as writer:
        for key, _, dtype in layout:
            out = merged.load(key)
            mod = reader.modulator(key, task)
            if mod is not None:
                mask, scale = mod
                work = torch.float64 if dtype == torch.float64 else torch.float32
                b = base_reader.load(key).to(work)
                delta = out.to(work) - b
                out = (b + scale * (mask.to(work) * delta)).to(dtype)
            writer.write(key, out)
        for path in non_weight_files(merged_dir):
            if path.name not in ("README.md",):
                writer.copy_file(path)
        writer.add_file(
            "README.md",
            f"# Task {task!r} materialised from {merged_dir.name}\n\n"
            f"Written by `pactframe materialize` from the task-conditioned merge in "
            f"`{merged_dir}` (base `{base}`).\n",
        )
        return writer.commit()
