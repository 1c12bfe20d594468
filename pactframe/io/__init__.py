"""Checkpoint input and output: safetensors reading, writing, sizes and units.

Three modules, each importable alone:

- :mod:`pactframe.io.reader`: :class:`CheckpointReader` (lazy safetensors, one file
  or a sharded folder) and the model-folder rules (files confined to the folder,
  pickles refused, the non-weight files copied into an output);
- :mod:`pactframe.io.writer`: :class:`CheckpointWriter` (atomic, sharded, a layout
  known in advance) and :func:`check_destination`;
- :mod:`pactframe.io.units`: :func:`numel`, :func:`dtype_size`, the dtype codes,
  :func:`parse_size` and :func:`format_bytes`.

This package re-exports their public names. It is ``pactframe.io``, a subpackage:
``import io`` anywhere still means the standard library. Modules inside the package
import from the submodules, never from ``pactframe.io`` itself, so that importing one
of them does not close an import cycle through this file.
"""

from __future__ import annotations

from pactframe.io.reader import (
    INDEX_NAME,
    NON_WEIGHT_SAFETENSORS,
    PICKLE_SUFFIXES,
    SINGLE_NAME,
    CheckpointReader,
    TensorInfo,
    non_weight_files,
    pickle_refusal,
    read_header,
    read_json_in_folder,
    resolve_in_folder,
)
from pactframe.io.units import (
    CODE_FROM_DTYPE,
    FLOAT_CODES,
    dtype_size,
    format_bytes,
    numel,
    parse_size,
)
from pactframe.io.writer import (
    DEFAULT_SHARD_SIZE,
    CheckpointWriter,
    check_destination,
    plan_shards,
)

__all__ = [
    "CODE_FROM_DTYPE",
    "DEFAULT_SHARD_SIZE",
    "FLOAT_CODES",
    "INDEX_NAME",
    "NON_WEIGHT_SAFETENSORS",
    "PICKLE_SUFFIXES",
    "SINGLE_NAME",
    "CheckpointReader",
    "CheckpointWriter",
    "TensorInfo",
    "check_destination",
    "dtype_size",
    "format_bytes",
    "non_weight_files",
    "numel",
    "parse_size",
    "pickle_refusal",
    "plan_shards",
    "read_header",
    "read_json_in_folder",
    "resolve_in_folder",
]
