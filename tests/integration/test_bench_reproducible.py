"""The demo reproduces: two runs from empty caches with the same thread count give
byte-identical base, fine-tuned checkpoints and covariances, and the same table.

Before each run the test leaves torch's global generator in a different state,
as whatever ran earlier in a process would: a suite that drew its initial weights
from it (vision-small's encoder did, before ``suite_version`` 2) gives two
different bases here. A reduced vision-small (two tasks, a short pre-training)
keeps it fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pactframe_bench.demo import run_demo
from pactframe_bench.vision_small import VisionSmall
from safetensors import safe_open

REDUCED = {
    "recipe": {"pretrain_epochs": 1, "finetune_steps": 15, "covariance_examples": 128},
    "tasks": ("rot90", "digits_mod3"),
}
METHODS = ["ties", "pact+tsv_m"]
TIMING = ("merge_seconds", "merged_dir")


def _demo(tmp_path: Path, name: str, global_seed: int) -> tuple[dict, Path, Path]:
    torch.manual_seed(global_seed)
    torch.rand(global_seed + 1)  # and a different position in the stream
    out, cache = tmp_path / name / "out", tmp_path / name / "cache"
    results = run_demo(
        out, METHODS, suite_options={**REDUCED, "root": cache}, log=lambda message: None
    )
    return results, out, cache


def _content(path: Path) -> object:
    """A file's content: JSON as bytes; safetensors as metadata and tensors (the writer
    stores the metadata mapping in hash order, so equal files can differ in bytes)."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in sorted(f.keys())}


def _same(a: object, b: object) -> bool:
    if isinstance(a, bytes) or isinstance(b, bytes):
        return a == b
    (meta_a, tensors_a), (meta_b, tensors_b) = a, b  # type: ignore[misc]
    return (
        meta_a == meta_b
        and tensors_a.keys() == tensors_b.keys()
        and all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    )


def _files(cache: Path) -> dict[str, object]:
    """Every artefact the suite built, by path relative to the cache (recipe hash included)."""
    return {
        str(p.relative_to(cache)): _content(p)
        for p in sorted(cache.rglob("*"))
        if p.is_file() and p.suffix in (".safetensors", ".json")
    }


def _without_timings(results: dict) -> dict:
    rows = {
        name: {k: v for k, v in row.items() if k not in TIMING}
        for name, row in results["rows"].items()
    }
    return {**results, "rows": rows}


def _table_without_timings(out: Path) -> list[list[str]]:
    lines = (out / "table.md").read_text().splitlines()
    return [[c for i, c in enumerate(line.split("|")) if i != 4] for line in lines]


def test_two_demos_from_empty_caches_give_identical_models_and_tables(tmp_path):
    first, out1, cache1 = _demo(tmp_path, "first", 1)
    second, out2, cache2 = _demo(tmp_path, "second", 2)

    files1, files2 = _files(cache1), _files(cache2)
    names = set(files1)
    assert any(n.endswith("base.safetensors") for n in names)
    for task in REDUCED["tasks"]:
        assert any(n.endswith(f"seed0/{task}.safetensors") for n in names)
        assert any(n.endswith(f"seed0/{task}.covariance.safetensors") for n in names)
    assert set(files2) == names
    differing = sorted(n for n in names if not _same(files1[n], files2[n]))
    assert differing == [], f"built twice, these artefacts differ: {differing}"

    assert set(first["rows"]) == set(METHODS)
    assert _without_timings(first) == _without_timings(second)
    assert _table_without_timings(out1) == _table_without_timings(out2)
    saved = json.loads((out2 / "results.json").read_text())
    assert _without_timings(saved) == json.loads(json.dumps(_without_timings(first)))


def test_the_suite_leaves_the_global_generator_alone(tmp_path):
    """Building draws from its own seeded generators only: the caller's stream goes on
    exactly where it was (so tests and user code around a build stay reproducible too)."""
    suite = VisionSmall(
        seed=0, root=tmp_path, log=lambda message: None, tasks=("rot90",),
        recipe={"pretrain_epochs": 1, "finetune_steps": 3, "covariance_examples": 32},
    )
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    suite.build()
    assert torch.equal(torch.rand(4), expected)
