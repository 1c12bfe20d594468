"""Hypothesis profiles: ``ci`` (derandomized, no deadline) and ``dev``.

Call :func:`register_profiles` from a ``conftest.py``; the ``ci`` profile is
loaded when ``CI`` is set, unless ``HYPOTHESIS_PROFILE`` names another.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def register_profiles() -> None:
    settings.register_profile(
        "ci",
        derandomize=True,
        deadline=None,
        max_examples=40,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "dev", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile("thorough", deadline=None, max_examples=500)
    default = "ci" if os.environ.get("CI") else "dev"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", default))
