"""``pactframe convert MERGEKIT.yml``: print the equivalent pactframe config (YAML)."""

from __future__ import annotations

import argparse

help = "print the pactframe config equivalent to a mergekit config (see docs/mergekit.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a mergekit YAML config (with merge_method)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from pactframe.config import read_yaml
    from pactframe.errors import ConfigError
    from pactframe.mergekit_compat import convert_mergekit, is_mergekit_config

    data = read_yaml(args.config)
    if not is_mergekit_config(data):
        raise ConfigError(
            f"{args.config} has no merge_method, so it is not a mergekit config; a pactframe "
            "config needs no conversion (check it with `pactframe validate`)."
        )
    converted = convert_mergekit(data, base_dir=Path(args.config).parent, source=args.config)
    print(f"# pactframe config converted from the mergekit config {args.config}")
    for note in converted.notes:
        print(f"# note: {note}")
    print(yaml.safe_dump(converted.config, sort_keys=False), end="")
    return 0
