"""Device placement and memory accounting (the pipeline alone moves tensors).

Policy: every bundle is moved to the run's device and cast to the compute dtype
(float32 by default, float64 selectable) before any component sees it; the
merged tensor is cast to the output dtype and moved back to the CPU before it is
written. ``auto`` picks ``cuda`` when ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import resource
import sys

import torch

from pactframe.errors import ConfigError

COMPUTE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
OUTPUT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_device(spec: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a usable :class:`torch.device`."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ConfigError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {spec!r}."
        ) from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {spec!r}.")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {spec!r} was requested but torch sees no CUDA device (torch "
            f"{torch.__version__}). Use device: auto or cpu, or install a CUDA build of torch."
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"device {spec!r} does not exist: torch sees {count} CUDA device(s) (cuda:0 .. "
            f"cuda:{count - 1})."
        )
    return device


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (bytes).

    On Linux this is ``VmHWM`` of ``/proc/self/status``, the high-water mark of this
    process's own memory: ``ru_maxrss`` survives ``exec``, so a child started by a
    large process would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_device_bytes(device: torch.device) -> int | None:
    """Peak CUDA memory allocated by torch on ``device``, or ``None`` on the CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
