"""Exact order statistics of large 1-D tensors without sorting them.

:func:`kth_largest` returns exactly what ``torch.kthvalue(values, n - k + 1)``
returns (the ``k``-th largest entry, NaN counted as the largest, as in
``torch.sort``), but in a few linear passes instead of a selection over a copy
with int64 indices (``torch.kthvalue`` on CPU needs about 12 bytes of temporaries
per entry and is the slowest step of a per-tensor TIES trim).

Method (bracket from a sample, then verify by counting; Floyd and Rivest,
"Expected time bounds for selection", CACM 18(3), 1975, the SELECT algorithm):

1. select in a fixed-seed sample of ``m`` entries (the indices come from a CPU
   :class:`torch.Generator` and move to the tensor's device) and read off two
   sample values ``hi >= lo`` that bracket the ``k``-th largest with a margin of
   ``6 sqrt(m q (1 - q)) + 8`` sample ranks around ``q m``, ``q = k / n``;
2. count ``above = #{v > hi}`` and gather the candidates ``lo <= v <= hi``;
3. if ``above < k <= above + #candidates`` the answer is the
   ``(k - above)``-th largest candidate (an exact ``torch.kthvalue`` on the
   candidates, about 12 sqrt(q (1 - q) / m) of the entries); otherwise (an
   unlucky sample, never wrong, only slower) fall back to ``torch.kthvalue`` on
   everything. Tensors holding NaN, and small tensors, go to ``torch.kthvalue``
   directly. The sample has ``m = clamp(n // 64, 2^12, 2^16)`` entries.

The result is an entry of ``values`` chosen by rank alone, so it is the same
whatever the sample; only the time depends on it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pactframe.errors import InputError

#: entries in the sample that brackets the k-th largest value (at most; n // 64 for
#: smaller tensors, at least MIN_SAMPLE_SIZE)
SAMPLE_SIZE = 1 << 16
MIN_SAMPLE_SIZE = 1 << 12
#: tensors with at most this many entries go straight to torch.kthvalue
DIRECT_LIMIT = 1 << 18
_SAMPLE_SEED = 0x7153
_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest entry (``1 <= k <= n``) of the 1-D tensor ``values``, as a
    0-d tensor of its dtype and device; equal to ``torch.kthvalue(values, n - k + 1).values``.
    """
    n = values.numel()
    if values.ndim != 1 or not 1 <= k <= n:
        raise InputError(
            f"kth_largest needs a 1-D tensor and a rank 1 <= k <= numel; got shape "
            f"{tuple(values.shape)} and k = {k}. Flatten the tensor and clamp k."
        )
    if n <= DIRECT_LIMIT or bool(torch.isnan(values.amax())):
        return torch.kthvalue(values, n - k + 1).values
    found = _bracketed(values, k)
    if found is None:
        return torch.kthvalue(values, n - k + 1).values
    return found


def _bracketed(values: torch.Tensor, k: int) -> torch.Tensor | None:
    """Steps 1-3 of the module docstring; ``None`` when the sample's bracket missed."""
    n = values.numel()
    m = min(SAMPLE_SIZE, max(MIN_SAMPLE_SIZE, n // 64))
    gen = torch.Generator().manual_seed(_SAMPLE_SEED)
    picks = torch.randint(n, (m,), generator=gen).to(values.device)
    sample = values[picks]
    q = k / n
    centre = int(q * m)
    margin = int(6 * math.sqrt(m * q * (1 - q))) + 8
    # i-th largest of the sample (0-based) = its (m - i)-th smallest
    hi = torch.kthvalue(sample, m - max(centre - margin, 0)).values
    lo = torch.kthvalue(sample, m - min(centre + margin, m - 1)).values
    beyond = values > hi
    above = int(torch.count_nonzero(beyond))
    inside = values >= lo
    inside.logical_xor_(beyond)  # lo <= v <= hi: ``beyond`` is a subset of ``inside``
    del beyond
    candidates = _select(values, inside)
    del inside
    rank = k - above
    if not 0 < rank <= candidates.numel():
        return None
    return torch.kthvalue(candidates, candidates.numel() - rank + 1).values


def _select(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[mask]`` (1-D, in order). On the CPU numpy's ``compress`` does it in a
    quarter of the time of torch's ``masked_select`` (zero-copy views both ways)."""
    if values.device.type == "cpu" and values.dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.compress(mask.numpy(), values.numpy()))
    return values[mask]
