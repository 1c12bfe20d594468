"""Sizes and units: element counts, dtype codes and sizes, byte sizes read and shown.

The one place that computes a shape's element count (:func:`numel`), a dtype's
item size (:func:`dtype_size`), parses a configured size such as ``2GB``
(:func:`parse_size`) and prints a byte count (:func:`format_bytes`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import torch

from pactframe.errors import ConfigError, short_repr
from pactframe.safetensors_header import DTYPE_FROM_CODE

#: safetensors dtype code of each torch dtype (``torch.float16`` -> ``"F16"``)
CODE_FROM_DTYPE: dict[torch.dtype, str] = {v: k for k, v in DTYPE_FROM_CODE.items()}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16"})


def numel(shape: Iterable[int]) -> int:
    """The number of elements of a tensor of ``shape`` (1 for ``()``), as an exact
    Python int: no overflow for the shapes an untrusted header may declare."""
    n = 1
    for s in shape:
        n *= int(s)
    return n


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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
