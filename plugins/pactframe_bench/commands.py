"""The benchmark's CLI subcommands, ``pactframe demo`` and ``pactframe bench``,
registered through the ``pactframe_register_commands`` hook (entry point
``bench`` of the ``pactframe`` group in pyproject.toml)."""

from __future__ import annotations

from pactframe import hookimpl
from pactframe_bench import bench_cmd, demo_cmd


@hookimpl
def pactframe_register_commands() -> list[object]:
    return [demo_cmd, bench_cmd]
