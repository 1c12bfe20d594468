"""Task-conditioned merges: the plain model base + delta, per-task masks and scales in
task_modulators.safetensors, and `materialize` giving base + s_t * (m_t * delta)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pactframe.api import merge
from pactframe.cli import main
from pactframe.errors import PactframeError
from pactframe.modulators import MODULATOR_FILE, materialize, pack_mask, unpack_mask
from tests.integration._pipeline_helpers import load_output, test_registry, write_models


def _emr_like(base, fts, key):
    """Independent reference of the test merger t_mask (float64)."""
    b = base[key].float().double()
    tvs = torch.stack([ft[key].float().double() - b for ft in fts])
    sign = torch.where(tvs.sum(0) >= 0, 1.0, -1.0).double()
    delta = sign * (tvs * sign).clamp(min=0).amax(0)
    masks = [(t * sign) > 0 for t in tvs]
    return b, delta, masks, [1.0 + i / 10 for i in range(len(fts))]


@pytest.fixture
def merged(tmp_path):
    base, fts, bp, paths = write_models(tmp_path, tasks=3, sharded=True)
    cfg = {
        "base": str(bp),
        "models": [{"name": n, "path": str(p)} for n, p in zip("abc", paths)],
        "merger": "t_mask",
        "fallback": "t_mean",
        "output": {"shard_size": 500},
    }
    report = merge(cfg, tmp_path / "out", registry=test_registry())
    return base, fts, tmp_path, report


def test_plain_output_and_modulator_file(merged):
    base, fts, tmp_path, report = merged
    out = load_output(tmp_path / "out")
    assert report["summary"]["task_modulators"] == MODULATOR_FILE
    with safe_open(str(tmp_path / "out" / MODULATOR_FILE), "pt") as f:
        meta = f.metadata()
        assert meta["format"] == "pactframe-task-modulators" and meta["tasks"] == '["a", "b", "c"]'
        for key in base:
            if not base[key].is_floating_point():
                assert f"{key}::mask" not in f.keys()
                continue
            b, delta, masks, scales = _emr_like(base, fts, key)
            torch.testing.assert_close(out[key].double(), (b + delta).float().double())
            packed = f.get_tensor(f"{key}::mask")
            assert packed.shape == (3, (base[key].numel() + 7) // 8)
            for t in range(3):
                expect = np.packbits(masks[t].reshape(-1).numpy())
                assert np.array_equal(packed[t].numpy(), expect)
            assert f.get_tensor(f"{key}::scale").tolist() == pytest.approx(scales)


@pytest.mark.parametrize("task", ["a", "c"])
def test_materialize_round_trip(merged, task):
    base, fts, tmp_path, _ = merged
    dest = tmp_path / f"task-{task}"
    assert main(["materialize", str(tmp_path / "out"), "--task", task, str(dest)]) == 0
    got = load_output(dest)
    t = "abc".index(task)
    for key in base:
        if not base[key].is_floating_point():
            assert torch.equal(got[key], base[key])
            continue
        b, delta, masks, scales = _emr_like(base, fts, key)
        ref = b + scales[t] * masks[t].double() * delta
        torch.testing.assert_close(got[key].double(), ref, rtol=1e-5, atol=1e-6, msg=key)
    assert (dest / "config.json").exists() and not (dest / MODULATOR_FILE).exists()


def test_materialize_errors(merged, tmp_path_factory):
    base, fts, tmp_path, _ = merged
    with pytest.raises(PactframeError, match="Unknown task 'zz'.*a, b, c"):
        materialize(tmp_path / "out", "zz", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    plain = tmp_path_factory.mktemp("plain")
    _, _, bp, paths = write_models(plain)
    merge(
        {
            "base": str(bp),
            "models": [{"name": "a", "path": str(paths[0])}],
            "merger": "t_mean",
            "fallback": "t_mean",
        },
        plain / "out",
        registry=test_registry(),
    )
    with pytest.raises(PactframeError, match="not task-conditioned"):
        materialize(plain / "out", "a", plain / "x")


def test_single_shard_output_reads_without_the_modulator_file(tmp_path):
    """One shard and no index: readers of the folder must not take the modulator file
    for weights (materialize reads the folder like any checkpoint)."""
    from pactframe.io.reader import CheckpointReader

    base, fts, bp, paths = write_models(tmp_path, tasks=2)
    cfg = {
        "base": str(bp),
        "models": [{"name": n, "path": str(p)} for n, p in zip("ab", paths)],
        "merger": "t_mask",
        "fallback": "t_mean",
    }
    merge(cfg, tmp_path / "out", registry=test_registry())
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()
    assert sorted(CheckpointReader(tmp_path / "out").keys()) == sorted(base)
    materialize(tmp_path / "out", "b", tmp_path / "b")
    got = load_output(tmp_path / "b")
    key = "layers.0.attn.q.weight"
    b, delta, masks, scales = _emr_like(base, fts, key)
    torch.testing.assert_close(
        got[key].double(), b + scales[1] * masks[1].double() * delta, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4)])
def test_mask_packing_round_trip(shape):
    g = torch.Generator().manual_seed(len(shape))
    mask = torch.rand(shape, generator=g) > 0.5
    assert torch.equal(unpack_mask(torch.from_numpy(pack_mask(mask)), shape), mask)


def test_materialize_with_real_emr_if_registered(tmp_path, registry):
    if ("merger", "emr") not in registry:
        pytest.skip("the emr merger has not landed in this tree yet")
    base, fts, bp, paths = write_models(tmp_path, tasks=2)
    merge(
        {
            "base": str(bp),
            "models": [{"name": n, "path": str(p)} for n, p in zip("ab", paths)],
            "merger": "emr",
        },
        tmp_path / "out",
        registry=registry,
    )
    materialize(tmp_path / "out", "b", tmp_path / "b")
    got = load_output(tmp_path / "b")
    # EMR (harveyhuang18/EMR_Merging): elect sign of the mean, max |.| over agreeing tasks,
    # rescale lambda_t = mean|Delta_t| / mean|m_t * tau_uni| (per tensor here, one tensor)
    for key in [k for k, v in base.items() if v.ndim == 2]:
        b = base[key].double()
        tvs = torch.stack([ft[key].double() - b for ft in fts])
        flag = torch.where(tvs.mean(0) > 0, 1.0, -1.0).double()
        masks = (tvs * flag) > 0
        tau = flag * (tvs.abs() * masks).amax(0)
        assert got[key].shape == b.shape
        own = masks[1] * tau
        # task b's weight lies on the line b + lambda * own for some positive lambda
        diff = got[key].double() - b
        lam = float((diff * own).sum() / (own * own).sum())
        assert lam > 0
        torch.testing.assert_close(diff, lam * own, rtol=1e-4, atol=1e-5)
