"""``pactframe plugins``: every registered component by kind."""

from __future__ import annotations

import argparse
import json

from pactframe.contracts import KINDS

help = "list every registered component by kind, with its provider and parameters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, help="only this kind")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from pactframe.registry import build_registry

    registry = build_registry()
    kinds = [args.kind] if args.kind else list(KINDS)
    if args.json:
        data = {
            kind: [
                {
                    "name": e.name,
                    "class": f"{e.cls.__module__}.{e.cls.__qualname__}",
                    "provider": e.provider,
                    "parameters": [
                        {
                            "name": p.name,
                            "default": _jsonable(p.default),
                            "type": p.type,
                            "help": p.help,
                        }
                        for p in e.cls.parameters()
                    ],
                }
                for e in registry.entries(kind)
            ]
            for kind in kinds
        }
        print(json.dumps(data, indent=2))
        return 0
    for kind in kinds:
        entries = registry.entries(kind)
        print(f"{kind}s ({len(entries)}):")
        for e in entries:
            summary = (e.cls.__doc__ or "").strip().splitlines()
            print(f"  {e.name}  [{e.provider}]  {summary[0] if summary else ''}")
            for p in e.cls.parameters():
                extra = f"  -- {p.help}" if p.help else ""
                print(f"      {p.name} = {p.default!r}{extra}")
        print()
    return 0


def _jsonable(value: object) -> object:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
