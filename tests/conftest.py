"""Shared test configuration: Hypothesis profiles, the gpu marker, one torch thread."""

from __future__ import annotations

import pytest
import torch

from pactframe.testing import register_profiles

register_profiles()
# Tests are small; one intra-op thread avoids oversubscribing CI's 2 cores.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none present)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def registry():
    """A registry built from the installed entry points (built-ins included)."""
    from pactframe import build_registry

    return build_registry()
