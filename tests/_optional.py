"""Optional dependencies of some tests (extras ``ray`` and ``hf``).

Outside CI a missing extra skips those tests with the install command; under CI
(``CI`` set, as ``.ci/run`` runs) it is an error, so a CI run can never go green
by skipping them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str, extra: str) -> ModuleType:
    """``import module``; skip (outside CI) or fail (in CI) when it is missing."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"needs pip install 'pactframe[{extra}]'")
