"""The benchmark cache: folders keyed by a hash of the recipe that built them.

A recipe is a JSON-serialisable mapping of everything that determines an
artefact (data sizes, seeds, training hyperparameters, a format version). Two
runs with the same recipe share one folder, so a second run reuses what the
first built; changing any recipe value gives a new folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_VAR = "PACTFRAME_CACHE"


def cache_root() -> Path:
    """``$PACTFRAME_CACHE`` if set, else ``~/.cache/pactframe/bench``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pactframe" / "bench"


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """A short stable hash (16 hex digits) of the recipe's canonical JSON."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_dir(kind: str, recipe: Mapping[str, Any], root: Path | None = None) -> Path:
    """``<root>/<kind>-<hash>``, created, with the recipe written beside its artefacts."""
    folder = (root or cache_root()) / f"{kind}-{recipe_key(recipe)}"
    folder.mkdir(parents=True, exist_ok=True)
    recipe_file = folder / "recipe.json"
    if not recipe_file.exists():
        write_json(recipe_file, dict(recipe))
    return folder


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
