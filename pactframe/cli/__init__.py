"""The ``pactframe`` command line.

Each subcommand lives in its own module of this package, exposing
``help: str``, ``add_arguments(parser)`` and ``run(args) -> int``; the table
below maps command names to those modules. Plugins add more through the
``pactframe_register_commands`` hook (:mod:`pactframe.cli.hook_commands`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pactframe.cli.hook_commands import hook_commands
from pactframe.errors import PactframeError, PluginError

COMMANDS: dict[str, str] = {
    "collect-covariance": "pactframe.cli.collect_cmd",
    "convert": "pactframe.cli.convert_cmd",
    "merge": "pactframe.cli.merge_cmd",
    "validate": "pactframe.cli.validate_cmd",
    "diagnose": "pactframe.cli.diagnose_cmd",
    "materialize": "pactframe.cli.materialize_cmd",
    "example": "pactframe.cli.example_cmd",
    "plugins": "pactframe.cli.plugins_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    from pactframe import __version__

    parser = argparse.ArgumentParser(
        prog="pactframe", description="Training-free model merging (PACT, PAVE and friends)."
    )
    parser.add_argument("--version", action="version", version=f"pactframe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {name: importlib.import_module(path) for name, path in COMMANDS.items()}
    try:
        commands.update(hook_commands(reserved=commands))
    except PluginError as exc:  # a broken plugin must not take the core commands down
        print(f"pactframe: warning: plugin commands not loaded: {exc}", file=sys.stderr)
    for name in sorted(commands):
        module = commands[name]
        p = sub.add_parser(name, help=module.help, description=module.help)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except PactframeError as exc:
        print(f"pactframe {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
