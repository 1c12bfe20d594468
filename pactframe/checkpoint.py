"""Kept for compatibility: the checkpoint I/O now lives in :mod:`pactframe.io`.

``pactframe.checkpoint`` was one module holding the safetensors reader, the size and
unit helpers and the atomic writer. They are now :mod:`pactframe.io.reader`,
:mod:`pactframe.io.units` and :mod:`pactframe.io.writer`; this module re-exports the
same public names so that code importing them from here keeps working. New code
imports from :mod:`pactframe.io` (or its submodules). Nothing in pactframe imports
this module.
"""

from __future__ import annotations

from pactframe.io import *  # noqa: F403  (the same public names)
from pactframe.io import __all__ as __all__
