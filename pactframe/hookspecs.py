"""pluggy hook specifications: one hook per contract, each returning classes.

A plugin module implements any of these and is registered through the
``pactframe`` entry-point group::

    # pyproject.toml of your distribution
    [project.entry-points.pactframe]
    my_merger = "my_package.my_merger"

    # my_package/my_merger.py
    from pactframe import hookimpl

    @hookimpl
    def pactframe_register_mergers():
        return [MyMerger]

Hooks return classes, never instances, and are called once when a registry
is built, never per tensor.
"""

from __future__ import annotations

import pluggy

from pactframe.contracts import Decomposer, Evaluator, Executor, Merger, Preprocessor

PROJECT_NAME = "pactframe"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def pactframe_register_decomposers() -> list[type[Decomposer]]:  # type: ignore[empty-body]
    """Return :class:`~pactframe.contracts.Decomposer` subclasses to register."""


@hookspec
def pactframe_register_preprocessors() -> list[type[Preprocessor]]:  # type: ignore[empty-body]
    """Return :class:`~pactframe.contracts.Preprocessor` subclasses to register."""


@hookspec
def pactframe_register_mergers() -> list[type[Merger]]:  # type: ignore[empty-body]
    """Return :class:`~pactframe.contracts.Merger` subclasses to register."""


@hookspec
def pactframe_register_evaluators() -> list[type[Evaluator]]:  # type: ignore[empty-body]
    """Return :class:`~pactframe.contracts.Evaluator` subclasses to register."""


@hookspec
def pactframe_register_executors() -> list[type[Executor]]:  # type: ignore[empty-body]
    """Return :class:`~pactframe.contracts.Executor` subclasses to register (where the
    work units of a merge run: this process, worker processes, a cluster)."""


HOOK_FOR_KIND: dict[str, str] = {
    "decomposer": "pactframe_register_decomposers",
    "preprocessor": "pactframe_register_preprocessors",
    "merger": "pactframe_register_mergers",
    "evaluator": "pactframe_register_evaluators",
    "executor": "pactframe_register_executors",
}


@hookspec
def pactframe_register_commands() -> list[object]:  # type: ignore[empty-body]
    """Return ``pactframe`` CLI subcommands: objects (modules or classes) with ``name``,
    ``help``, ``add_arguments(parser)`` and ``run(args) -> int`` (docs/cli.md)."""
