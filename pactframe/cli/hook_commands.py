"""Subcommands that plugins add to ``pactframe`` through ``pactframe_register_commands``.

A command is any object (a module, a class) with four attributes, the same as
the core's own command modules in this package::

    name = "demo"                                  # the subcommand, kebab- or snake-case
    help = "one line for pactframe --help"
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

The hook implementation returns a list of them; its module is registered in the
``pactframe`` entry-point group like any component plugin (the benchmark
package ``pactframe_bench`` adds ``demo`` and ``bench`` this way).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import pluggy

from pactframe.errors import PluginError
from pactframe.plugins import make_plugin_manager, results_by_plugin

_COMMAND_RE = re.compile(r"[a-z][a-z0-9_-]*")
HOOK = "pactframe_register_commands"


def hook_commands(
    reserved: Collection[str] = (), pm: pluggy.PluginManager | None = None
) -> dict[str, Any]:
    """``{name: command}`` from every plugin's ``pactframe_register_commands``.

    Args:
        reserved: names already taken (the core's commands); a plugin reusing one is
            an error, as are two plugins with one name.
        pm: the plugin manager; default a fresh one loading every entry point.

    Raises:
        PluginError: naming the plugin, when a hook returns something that is not a
            list of commands, a command lacks an attribute, or a name is taken.
    """
    if pm is None:
        pm = make_plugin_manager()
    commands: dict[str, Any] = {}
    providers: dict[str, str] = {}
    for plugin, result in results_by_plugin(pm, HOOK, "commands", PluginError):
        for command in result:
            name = _check_command(command, plugin)
            if name in reserved:
                raise PluginError(
                    f"Plugin {plugin!r} registers the command {name!r}, which is a core "
                    "pactframe command. Rename it, or block the plugin with "
                    "PACTFRAME_BLOCK_PLUGINS=<plugin name>."
                )
            if name in commands:
                raise PluginError(
                    f"Two plugins register the command {name!r}: {providers[name]!r} and "
                    f"{plugin!r}. Uninstall one, or block one with "
                    "PACTFRAME_BLOCK_PLUGINS=<plugin name>."
                )
            commands[name] = command
            providers[name] = plugin
    return commands


def _check_command(command: Any, plugin: str) -> str:
    name = getattr(command, "name", None)
    if not isinstance(name, str) or not _COMMAND_RE.fullmatch(name):
        raise PluginError(
            f"Plugin {plugin!r}: a command from {HOOK}() needs a lower-case 'name' "
            f"(letters, digits, '-' or '_'); got {name!r} on {command!r}."
        )
    if not isinstance(getattr(command, "help", None), str):
        raise PluginError(f"Plugin {plugin!r}: the command {name!r} needs a 'help' string.")
    missing = [a for a in ("add_arguments", "run") if not callable(getattr(command, a, None))]
    if missing:
        raise PluginError(
            f"Plugin {plugin!r}: the command {name!r} lacks {' and '.join(missing)} "
            "(add_arguments(parser) and run(args) -> int)."
        )
    return name
