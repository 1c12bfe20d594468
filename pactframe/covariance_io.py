"""The covariance file format (version 1): one ``.safetensors`` file per model.

A covariance file holds, for every captured weight, the input second-moment
matrix ``C = X^T X / N`` of shape ``(d_in, d_in)`` (``X`` is ``(N, d_in)``, one
token per row), keyed by the weight's state-dict key exactly as in the
checkpoint (``model.layers.0.mlp.up_proj.weight``,
``transformer.h.0.attn.c_attn.weight``, ``encoder.layers.0.self_attn.in_proj_weight``).

Metadata (safetensors stores ``str -> str``):

- ``format``: ``"pactframe-covariance"``
- ``version``: ``"1"``
- ``layouts``: JSON object ``{key: "linear" | "conv1d"}``. ``linear`` weights are
  ``(d_out, d_in)`` (``d_in = weight.shape[1]``, ``LayerBundle.input_axis == 1``);
  ``conv1d`` weights (GPT-2's ``Conv1D``) are stored ``(d_in, d_out)``
  (``d_in = weight.shape[0]``, ``input_axis == 0``).
- ``num_samples``: JSON object ``{key: N}``, the token count behind each matrix.
- ``source`` (optional): free text (model, data split, number of batches).

This module only reads and writes that format; collection lives in
:mod:`pactframe.covariance`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pactframe.errors import CheckpointError, InputError

FORMAT_NAME = "pactframe-covariance"
FORMAT_VERSION = "1"
LAYOUTS = ("linear", "conv1d")
INPUT_AXIS = {"linear": 1, "conv1d": 0}
"""``LayerBundle.input_axis`` for each layout: the weight axis of length ``d_in``."""

PathLike = str | os.PathLike[str]


class CovarianceEntry(NamedTuple):
    """What the header says about one stored covariance."""

    shape: tuple[int, int]
    layout: str
    num_samples: int


def save_covariances(
    path: PathLike,
    covs: Mapping[str, torch.Tensor],
    layouts: Mapping[str, str],
    num_samples: Mapping[str, int],
    *,
    source: str | None = None,
) -> None:
    """Write ``covs`` (key -> ``(d, d)`` tensor) as a version-1 covariance file.

    Every key of ``covs`` needs a layout (``"linear"`` or ``"conv1d"``) and a
    positive token count. Tensors are written as given (dtype kept, made
    contiguous, moved to CPU); keys are written in sorted order.
    """
    if not covs:
        raise InputError(
            f"save_covariances: nothing to write to {os.fspath(path)!r}: the covariance "
            "mapping is empty. Check that the model has nn.Linear/Conv1D layers matching "
            "the include pattern and that at least one batch was given."
        )
    tensors: dict[str, torch.Tensor] = {}
    layout_meta: dict[str, str] = {}
    count_meta: dict[str, int] = {}
    for key in sorted(covs):
        cov = covs[key]
        if not isinstance(cov, torch.Tensor) or cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            shape = tuple(cov.shape) if isinstance(cov, torch.Tensor) else type(cov).__name__
            raise InputError(
                f"save_covariances: covariance {key!r} must be a square (d_in, d_in) tensor; "
                f"got {shape}. Pass X^T X / N for the weight's input X."
            )
        layout = layouts.get(key)
        if layout not in LAYOUTS:
            raise InputError(
                f"save_covariances: layout of {key!r} must be one of {list(LAYOUTS)}; "
                f"got {layout!r}. Give a layout for every covariance key."
            )
        count = num_samples.get(key)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InputError(
                f"save_covariances: num_samples of {key!r} must be a positive int (the "
                f"token count N); got {count!r}."
            )
        tensors[key] = cov.detach().to("cpu").contiguous()
        layout_meta[key] = layout
        count_meta[key] = count
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "layouts": json.dumps(layout_meta, sort_keys=True),
        "num_samples": json.dumps(count_meta, sort_keys=True),
    }
    if source is not None:
        metadata["source"] = str(source)
    save_file(tensors, os.fspath(path), metadata=metadata)


def _open(path: PathLike):  # type: ignore[no-untyped-def]
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise CheckpointError(
            f"Covariance file {p!r} does not exist. Collect one with "
            "`pactframe collect-covariance` or pactframe.covariance.collect_covariances."
        )
    try:
        return safe_open(p, framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f"Covariance file {p!r} is not a readable safetensors file ({exc}). "
            "Re-collect it with `pactframe collect-covariance`."
        ) from exc


def _parse_metadata(
    path: PathLike, metadata: Mapping[str, str] | None
) -> tuple[dict, dict, str | None]:
    p = os.fspath(path)
    meta = dict(metadata or {})
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"File {p!r} is not a pactframe covariance file: metadata 'format' is "
            f"{meta.get('format')!r}, expected {FORMAT_NAME!r}. Collect covariances with "
            "`pactframe collect-covariance`."
        )
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"Covariance file {p!r} has format version {meta.get('version')!r}; this "
            f"pactframe reads version {FORMAT_VERSION!r}. Re-collect the covariances."
        )
    try:
        layouts = json.loads(meta["layouts"])
        counts = json.loads(meta["num_samples"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"Covariance file {p!r} has missing or malformed 'layouts'/'num_samples' "
            f"metadata ({exc}). Re-collect the covariances."
        ) from exc
    if not isinstance(layouts, dict) or not isinstance(counts, dict):
        raise CheckpointError(
            f"Covariance file {p!r}: 'layouts' and 'num_samples' must be JSON objects; "
            f"got {type(layouts).__name__} and {type(counts).__name__}."
        )
    return layouts, counts, meta.get("source")


def read_covariance_header(path: PathLike) -> dict[str, CovarianceEntry]:
    """Key -> ``CovarianceEntry(shape, layout, num_samples)``, reading only the header."""
    with _open(path) as f:
        layouts, counts, _ = _parse_metadata(path, f.metadata())
        entries: dict[str, CovarianceEntry] = {}
        for key in sorted(f.keys()):
            shape = tuple(int(s) for s in f.get_slice(key).get_shape())
            layout = layouts.get(key)
            count = counts.get(key)
            square = len(shape) == 2 and shape[0] == shape[1]
            if not square or layout not in LAYOUTS or not isinstance(count, int):
                raise CheckpointError(
                    f"Covariance file {os.fspath(path)!r}: entry {key!r} is inconsistent "
                    f"(shape {shape}, layout {layout!r}, num_samples {count!r}); expected a "
                    f"square matrix, a layout in {list(LAYOUTS)} and an int count. "
                    "Re-collect the covariances."
                )
            entries[key] = CovarianceEntry((shape[0], shape[1]), layout, count)
    return entries


def read_covariance_source(path: PathLike) -> str | None:
    """The optional free-text ``source`` metadata of a covariance file."""
    with _open(path) as f:
        return _parse_metadata(path, f.metadata())[2]


def load_covariance(path: PathLike, key: str) -> torch.Tensor:
    """Load the single covariance stored under ``key`` (CPU tensor, stored dtype)."""
    with _open(path) as f:
        _parse_metadata(path, f.metadata())
        if key not in f.keys():
            known = sorted(f.keys())
            preview = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "")
            raise CheckpointError(
                f"Covariance file {os.fspath(path)!r} has no entry {key!r} "
                f"({len(known)} entries: {preview}). Keys must be the weight's state-dict key."
            )
        return f.get_tensor(key)
