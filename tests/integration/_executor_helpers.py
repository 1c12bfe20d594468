"""Test-only components for the executor tests (importable by worker processes and Ray
workers, which run from the repository root)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import ClassVar

import attrs
import torch

from pactframe import MergedTensor, Merger, hookimpl, param


@attrs.frozen
class KillMerger(Merger):
    """Test-only mean that kills its own process (SIGKILL, as the OOM killer does) when it
    merges a tensor whose name contains ``victim``; with ``once_marker`` set, only the
    first time (the marker file is created before dying), so a retry succeeds."""

    name: ClassVar[str] = "t_kill"
    victim: str = param("mlp")
    once_marker: str = param("")

    def merge(self, bundle, state=None):
        if self.victim in bundle.name:
            marker = Path(self.once_marker) if self.once_marker else None
            if marker is None or not marker.exists():
                if marker is not None:
                    marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        return MergedTensor(torch.stack(bundle.task_vectors).mean(0))


class ExecutorTestPlugin:
    @hookimpl
    def pactframe_register_mergers(self):
        return [KillMerger]
