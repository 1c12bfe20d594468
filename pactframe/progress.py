"""A small progress printer for long merges (no tqdm dependency).

On a terminal it redraws one line (``\\r``) at most every ``interval`` seconds;
elsewhere (logs, CI) it prints a full line at most every ``log_interval``
seconds, and always a final line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pactframe.io.units import format_bytes


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Tensors done, bytes done and an ETA from the byte rate."""

    def __init__(
        self,
        total_tensors: int,
        total_bytes: int,
        *,
        label: str = "merging",
        stream: TextIO | None = None,
        enabled: bool = True,
        interval: float = 0.2,
        log_interval: float = 10.0,
    ) -> None:
        self.total_tensors = total_tensors
        self.total_bytes = max(1, total_bytes)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.done_tensors = 0
        self.done_bytes = 0
        self.start = time.perf_counter()
        self._last = -float("inf")

    def line(self, current: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        frac = self.done_bytes / self.total_bytes
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        width = 20
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta_text = format_duration(eta) if eta == eta else "?"
        text = (
            f"{self.label} [{bar}] {self.done_tensors}/{self.total_tensors} tensors, "
            f"{format_bytes(self.done_bytes)}/{format_bytes(self.total_bytes)}, "
            f"{format_duration(elapsed)} elapsed, ETA {eta_text}"
        )
        return f"{text}  {current}" if current else text

    def update(self, name: str, nbytes: int) -> None:
        self.done_tensors += 1
        self.done_bytes += nbytes
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(self.line(name))

    def close(self) -> None:
        if not self.enabled:
            return
        self._emit(self.line("done"))
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _emit(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text[:200])
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
