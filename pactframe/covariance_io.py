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
import math
import os
from collections.abc import Mapping
from typing import NamedTuple

import torch
from safetensors.torch import save_file

from pactframe.errors import CheckpointError, InputError
from pactframe.safetensors_header import (
    JsonProblem,
    SafetensorsHeader,
    parse_file,
    read_tensor,
    shown,
    strict_json,
)

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


def _header(path: PathLike) -> SafetensorsHeader:
    """The validated safetensors header of a covariance file (see
    :mod:`pactframe.safetensors_header`)."""
    p = os.fspath(path)
    if not os.path.lexists(p):
        raise CheckpointError(
            f"Covariance file {p!r} does not exist. Collect one with "
            "`pactframe collect-covariance` or pactframe.covariance.collect_covariances."
        )
    try:
        return parse_file(p)
    except CheckpointError as exc:
        raise CheckpointError(
            f"Covariance file {p!r} is not a readable safetensors file: {exc} Re-collect it "
            "with `pactframe collect-covariance`."
        ) from exc


def _parse_metadata(
    path: PathLike, metadata: Mapping[str, str] | None
) -> tuple[dict, dict, str | None]:
    p = os.fspath(path)
    meta = dict(metadata or {})
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"File {p!r} is not a pactframe covariance file: metadata 'format' is "
            f"{shown(meta.get('format'))}, expected {FORMAT_NAME!r}. Collect covariances with "
            "`pactframe collect-covariance`."
        )
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"Covariance file {p!r} has format version {shown(meta.get('version'))}; this "
            f"pactframe reads version {FORMAT_VERSION!r}. Re-collect the covariances."
        )
    problem = None
    layouts: object = None
    counts: object = None
    try:
        layouts = strict_json(meta["layouts"].encode())
        counts = strict_json(meta["num_samples"].encode())
    except KeyError as exc:
        problem = f"its metadata lacks {exc}"
    except JsonProblem as exc:
        problem = f"its 'layouts' or 'num_samples' metadata {exc}"
    if problem is None and (not isinstance(layouts, dict) or not isinstance(counts, dict)):
        problem = (
            "'layouts' and 'num_samples' must be JSON objects; got "
            f"{type(layouts).__name__} and {type(counts).__name__}"
        )
    if problem is not None:
        raise CheckpointError(
            f"Covariance file {p!r}: {problem}. Re-collect the covariances."
        )
    assert isinstance(layouts, dict) and isinstance(counts, dict)
    return layouts, counts, meta.get("source")


class CovarianceFile:
    """A version-1 covariance file: header and metadata checked once, then one
    positioned read per :meth:`load`."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        header = _header(path)
        layouts, counts, self.source = _parse_metadata(path, header.metadata)
        self._infos = header.tensors
        self.entries: dict[str, CovarianceEntry] = {}
        for key in sorted(self._infos):
            info = self._infos[key]
            shape = info.shape
            layout = layouts.get(key)
            count = counts.get(key)
            square = len(shape) == 2 and shape[0] == shape[1]
            good_count = isinstance(count, int) and not isinstance(count, bool) and count >= 1
            if not square or layout not in LAYOUTS or not good_count or not info.is_float:
                raise CheckpointError(
                    f"Covariance file {self.path!r}: entry {shown(key)} is inconsistent "
                    f"(dtype {info.dtype_code}, shape {list(shape)}, layout {shown(layout)}, "
                    f"num_samples {shown(count)}); expected a square float matrix, a layout in "
                    f"{list(LAYOUTS)} and a positive int count. Re-collect the covariances."
                )
            self.entries[key] = CovarianceEntry((shape[0], shape[1]), layout, int(count))  # type: ignore[arg-type]

    def load(self, key: str) -> torch.Tensor:
        """The covariance stored under ``key`` (CPU tensor, stored dtype)."""
        if key not in self._infos:
            known = sorted(self._infos)
            preview = ", ".join(shown(k) for k in known[:5]) + (", ..." if len(known) > 5 else "")
            raise CheckpointError(
                f"Covariance file {self.path!r} has no entry {shown(key)} "
                f"({len(known)} entries: {preview}). Keys must be the weight's state-dict key."
            )
        return read_tensor(self._infos[key], label=f"covariance file {self.path!r}")


def read_covariance_header(path: PathLike) -> dict[str, CovarianceEntry]:
    """Key -> ``CovarianceEntry(shape, layout, num_samples)``, reading only the header."""
    return CovarianceFile(path).entries


def read_covariance_source(path: PathLike) -> str | None:
    """The optional free-text ``source`` metadata of a covariance file."""
    return CovarianceFile(path).source


def load_covariance(path: PathLike, key: str) -> torch.Tensor:
    """Load the single covariance stored under ``key`` (CPU tensor, stored dtype)."""
    return CovarianceFile(path).load(key)


# ------------------------------------------------------------ value checks
#: relative tolerance of the symmetry check, ``max|C - C^T| <= tol * max|C|``
SYMMETRY_RTOL = 1e-3


def psd_tolerance(d: int, dtype: torch.dtype) -> float:
    """Relative tolerance of the PSD check: ``max(1e-4, 2 sqrt(d) eps)``, at most 1e-2
    (``eps`` the storage dtype's machine epsilon: a rounded Gram matrix may dip that
    far below zero)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return min(1e-2, max(1e-4, 2.0 * math.sqrt(max(d, 1)) * eps))


def covariance_problem(matrix: torch.Tensor) -> str | None:
    """Why ``matrix`` is not a usable input covariance, or ``None``.

    A covariance ``C = X^T X / N`` must be finite, symmetric within
    :data:`SYMMETRY_RTOL` relative to ``max|C|``, not all zero (the layer saw no input)
    and positive semi-definite within :func:`psd_tolerance`: ``C + tol ||C||_F I``
    must have a Cholesky factor (``||C||_F >= ||C||_2``, so this accepts every
    eigenvalue down to ``-tol ||C||_F`` and refuses clearly indefinite matrices).
    Checked in float64 on the CPU.
    """
    c = matrix.detach().to("cpu", torch.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        return f"it is not a square matrix (shape {list(c.shape)})"
    finite = torch.isfinite(c)
    if not bool(finite.all()):
        nan = int(torch.isnan(c).sum())
        inf = int((~finite).sum()) - nan
        return f"it holds {nan} NaN and {inf} infinite value(s)"
    peak = float(c.abs().max()) if c.numel() else 0.0
    if peak == 0.0:
        return "it is all zero (the layer saw no input, or only zeros, while collecting)"
    asym = float((c - c.T).abs().max())
    if asym > SYMMETRY_RTOL * peak:
        return (
            f"it is not symmetric: max|C - C^T| = {asym:.3g} against max|C| = {peak:.3g} "
            f"(tolerance {SYMMETRY_RTOL:g} relative)"
        )
    tol = psd_tolerance(c.shape[0], matrix.dtype)
    unit = c / peak  # scaled to max|C| = 1: no underflow or overflow below
    sym = 0.5 * (unit + unit.T)
    fro = float(torch.linalg.matrix_norm(sym))
    shifted = sym + (tol * fro) * torch.eye(c.shape[0], dtype=torch.float64)
    _, info = torch.linalg.cholesky_ex(shifted)
    if int(info) != 0:
        eig = torch.linalg.eigvalsh(sym) * peak
        return (
            f"it is not positive semi-definite: smallest eigenvalue {float(eig[0]):.3g}, "
            f"largest {float(eig[-1]):.3g} (tolerance {tol:.1g} x ||C||_F = "
            f"{tol * fro * peak:.3g})"
        )
    return None
