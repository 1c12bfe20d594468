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


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray (2 CPUs, 127.0.0.1, no dashboard) shared by the Ray tests and shut
    down at the end of the session; the ``ray`` executor reuses this connection."""
    import os
    from pathlib import Path

    from tests._optional import require

    ray = require("ray", "ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = str(Path(__file__).resolve().parents[1])  # test-only components import from tests/
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level="warning",
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": root}},
        )
    yield ray
    ray.shutdown()
