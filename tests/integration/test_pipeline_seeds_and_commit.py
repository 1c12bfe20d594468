"""Issue 18, item 9: bugs in the pipeline and the writer that the suite used to miss.

- Per-tensor randomness must come from the run seed AND the tensor name: two
  tensors with identical values and different names get different DARE masks and
  different randomized-SVD sketches, through the whole pipeline on files.
- The final commit writes the index, then renames the temporary folder into place:
  a failure anywhere in it leaves no destination folder and no temporary folder,
  and with ``force`` the previous output is back under its name.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from pactframe.api import merge
from pactframe.io.reader import INDEX_NAME, CheckpointReader
from tests.integration._pipeline_helpers import load_output, save_single, tiny_model, write_models

TWINS = ("layers.0.mlp.weight", "layers.1.mlp.weight")


def twin_models(root: pathlib.Path, tasks: int = 2):
    """Base and fine-tunes in which the two ``TWINS`` tensors are equal, value for value."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 40, generator=g)
    base = {TWINS[0]: w, TWINS[1]: w.clone()}
    paths = []
    for t in range(tasks):
        delta = 0.1 * torch.randn(48, 40, generator=g)
        ft = {TWINS[0]: w + delta, TWINS[1]: w + delta}
        paths.append(save_single(ft, root / f"ft{t}.safetensors"))
    return save_single(base, root / "base.safetensors"), paths


def merged_twins(tmp_path, name, preprocessors, seed=0):
    bp, paths = twin_models(tmp_path)
    config = {
        "base": str(bp),
        "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
        "preprocessors": preprocessors,
        "merger": "task_arithmetic",
        "seed": seed,
    }
    out = tmp_path / name
    merge(config, out)
    sd = load_output(out)
    return sd[TWINS[0]], sd[TWINS[1]]


DARE = [{"name": "dare", "drop_probability": 0.5}]
RSVD = [
    {
        "name": "pact",
        "core_rank": 4,
        "task_rank": 4,
        "decomposer": {"name": "randomized_svd", "oversampling": 2, "power_iterations": 0},
    }
]


@pytest.mark.parametrize("preprocessors", [DARE, RSVD], ids=["dare", "randomized_svd"])
def test_identical_tensors_with_different_names_get_different_randomness(
    tmp_path, preprocessors
):
    """Same values, different names -> different random draws (the seed includes the name),
    while the same name and run seed reproduce the same bytes."""
    a, b = merged_twins(tmp_path, "one", preprocessors)
    assert not torch.equal(a, b)
    assert (a != b).float().mean() > 0.1  # not a rounding difference: different draws
    again_a, again_b = merged_twins(tmp_path, "two", preprocessors)
    assert torch.equal(a, again_a) and torch.equal(b, again_b)
    other_a, _ = merged_twins(tmp_path, "three", preprocessors, seed=1)
    assert not torch.equal(a, other_a)  # and the run seed matters too


def test_dare_mask_is_drawn_from_the_documented_tensor_seed(tmp_path):
    """The kept entries of DARE on tensor ``name`` are those of an independent Bernoulli
    draw from ``generator(derive_seed(run_seed, name), "dare", task)`` (docs/pipeline.md)."""
    from pactframe.seeding import derive_seed, generator

    bp, paths = twin_models(tmp_path, tasks=1)
    out = tmp_path / "out"
    merge(
        {
            "base": str(bp),
            "models": [{"name": "t0", "path": str(paths[0])}],
            "preprocessors": DARE,
            "merger": "task_arithmetic",
            "seed": 7,
        },
        out,
    )
    merged = load_output(out)
    base = load_output_file(bp)
    for name in TWINS:
        kept = merged[name] != base[name]
        g = generator(derive_seed(7, name), "dare", "t0")
        expected = torch.rand((48, 40), generator=g) >= 0.5
        agreement = (kept == expected).float().mean()
        assert agreement > 0.99, (name, float(agreement))


def load_output_file(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------- the commit
def sharded_config(tmp_path):
    _, _, bp, paths = write_models(tmp_path, layers=3)
    return {
        "base": str(bp),
        "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
        "merger": "task_arithmetic",
        "output": {"shard_size": "600B"},  # several shards, so an index is written
    }


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".pactframe-" in p.name)


def test_every_merged_output_has_its_index_before_it_appears(tmp_path, monkeypatch):
    """The index is written inside the temporary folder, before the rename: at the moment
    the destination appears it already holds the index and every shard it names."""
    real_rename = pathlib.Path.rename
    seen = {}

    def rename(self, target):
        if ".pactframe-tmp-" in self.name:
            seen["files"] = sorted(p.name for p in self.iterdir())
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    cfg = sharded_config(tmp_path)
    out = tmp_path / "out"
    merge(cfg, out)
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and INDEX_NAME in seen["files"]
    assert set(shards) <= set(seen["files"])
    reader = CheckpointReader(out)  # read back through the index: every tensor is there
    assert sorted(reader.keys()) == sorted(tiny_model(0, layers=3))


@pytest.mark.parametrize("where", ["index", "rename"])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_inside_the_commit_leaves_no_output_and_no_temporary(
    tmp_path, monkeypatch, where, existing
):
    """Fail while writing the index, or at the final rename: no destination (or the
    previous one, intact, with ``force``), no temporary and no moved-aside folder."""
    cfg = sharded_config(tmp_path)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "previous.txt").write_text("the previous output")
    real_write_text, real_rename = pathlib.Path.write_text, pathlib.Path.rename

    def write_text(self, *args, **kwargs):
        if self.name == INDEX_NAME and where == "index":
            raise OSError(28, "No space left on device", str(self))
        return real_write_text(self, *args, **kwargs)

    def rename(self, target):
        if ".pactframe-tmp-" in self.name and where == "rename":
            raise OSError(5, "Input/output error", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    monkeypatch.setattr(pathlib.Path, "rename", rename)
    with pytest.raises(OSError):
        merge(cfg, out, force=existing)
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    else:
        assert not out.exists()
    assert leftovers(tmp_path) == []
