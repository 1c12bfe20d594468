"""The plugin-manager factory (no import-time global).

``PACTFRAME_BLOCK_PLUGINS`` is a comma-separated list of entry-point names to
block, e.g. ``PACTFRAME_BLOCK_PLUGINS=ties,my_broken_plugin``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import pluggy

from pactframe import hookspecs
from pactframe.errors import PluginError

BLOCK_ENV = "PACTFRAME_BLOCK_PLUGINS"
ENTRY_POINT_GROUP = "pactframe"


def blocked_from_env(environ: dict[str, str] | None = None) -> list[str]:
    value = (os.environ if environ is None else environ).get(BLOCK_ENV, "")
    return sorted({part.strip() for part in value.split(",") if part.strip()})


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    plugins: Iterable[object] = (),
    block: Iterable[str] | None = None,
) -> pluggy.PluginManager:
    """Build a plugin manager for the ``pactframe`` hooks.

    Args:
        load_entrypoints: load every plugin of the ``pactframe`` entry-point group
            (the built-ins included).
        plugins: extra plugin objects (modules or instances) to register, e.g.
            in tests or embedded uses.
        block: plugin names to block; defaults to ``$PACTFRAME_BLOCK_PLUGINS``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked_from_env() if block is None else block:
        pm.set_blocked(name)
    for plugin in plugins:
        pm.register(plugin)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # an entry point that fails to import
            raise PluginError(
                f"Loading the {ENTRY_POINT_GROUP!r} entry points failed: {exc}. Reinstall the "
                f"plugin that raised it, or block it with {BLOCK_ENV}=<entry point name>."
            ) from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"A plugin implements a hook pactframe does not declare: {exc}. Check the "
            "spelling against pactframe.hookspecs."
        ) from exc
    return pm


def results_by_plugin(
    pm: pluggy.PluginManager, hook_name: str, what: str, error: type[Exception]
) -> Iterator[tuple[str, list[Any] | tuple[Any, ...]]]:
    """``(plugin name, returned list)`` for each implementation of ``hook_name``, in
    registration order, each called alone so every item keeps its provider.

    ``None`` results are skipped; anything but a list or tuple raises ``error`` naming
    the plugin and ``what`` the hook must return (``"classes"``, ``"commands"``).
    """
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        result = impl.function()
        if result is None:
            continue
        if not isinstance(result, (list, tuple)):
            raise error(
                f"Plugin {impl.plugin_name!r}: {hook_name}() must return a list of {what}; "
                f"got {type(result).__name__}."
            )
        yield impl.plugin_name, result
