"""What every writing command does with its output path before any work."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from pactframe.output_safety import check_output, sweep_stale


def prepare_output(
    command: str,
    output: str | os.PathLike[str],
    inputs: Iterable[tuple[str, str | os.PathLike[str]]] = (),
    protected: Iterable[tuple[str, str | os.PathLike[str]]] = (),
) -> None:
    """Refuse an unsafe ``output`` (:func:`~pactframe.output_safety.check_output`), then
    remove the temporaries killed runs left beside it, saying so on stderr."""
    check_output(output, inputs, protected=protected)
    for note in sweep_stale(output):
        print(f"pactframe {command}: {note}", file=sys.stderr)
