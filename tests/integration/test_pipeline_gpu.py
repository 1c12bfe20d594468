"""CPU and CUDA merges agree to tolerance (skipped cleanly where no GPU is present)."""

from __future__ import annotations

import pytest
import torch

from pactframe.api import merge
from tests.integration._pipeline_helpers import load_output, test_registry, write_models


def _cfg(bp, paths, merger, device, preprocessors=()):
    return {
        "base": str(bp),
        "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
        "merger": merger,
        "preprocessors": list(preprocessors),
        "device": device,
    }


@pytest.mark.gpu
@pytest.mark.parametrize("merger", ["t_sum", "t_noise", "t_mask"])
def test_cpu_and_cuda_agree_on_test_mergers(tmp_path, merger):
    base, fts, bp, paths = write_models(
        tmp_path, tasks=3, sharded=True, dtypes={"lm_head.weight": torch.bfloat16}
    )
    reg = test_registry()
    for device in ("cpu", "cuda"):
        cfg = _cfg(bp, paths, merger, device, ["t_scale"])
        cfg["fallback"] = "t_mean"
        report = merge(cfg, tmp_path / device, registry=reg)
        assert report["device"].startswith(device)
    cpu, gpu = load_output(tmp_path / "cpu"), load_output(tmp_path / "cuda")
    for key in cpu:
        tol = 1e-2 if cpu[key].dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(
            gpu[key].double(), cpu[key].double(), rtol=tol, atol=tol, msg=key
        )


@pytest.mark.gpu
def test_cpu_and_cuda_agree_on_pact_tsv_m(tmp_path, registry):
    base, fts, bp, paths = write_models(tmp_path, tasks=3, width=32)
    for device in ("cpu", "cuda"):
        merge(
            _cfg(bp, paths, "tsv_m", device, [{"name": "pact", "decomposer": "randomized_svd"}]),
            tmp_path / device,
            registry=registry,
        )
    cpu, gpu = load_output(tmp_path / "cpu"), load_output(tmp_path / "cuda")
    for key in cpu:
        torch.testing.assert_close(gpu[key], cpu[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.gpu
def test_auto_device_picks_cuda(tmp_path):
    base, fts, bp, paths = write_models(tmp_path)
    cfg = _cfg(bp, paths, "t_sum", "auto")
    cfg["fallback"] = "t_mean"
    assert merge(cfg, tmp_path / "o", registry=test_registry())["device"].startswith("cuda")


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path needs a CPU-only torch")
    from pactframe.errors import ConfigError

    base, fts, bp, paths = write_models(tmp_path)
    cfg = _cfg(bp, paths, "t_sum", "cuda:0")
    cfg["fallback"] = "t_mean"
    with pytest.raises(ConfigError, match="'cuda:0' was requested but torch sees no CUDA"):
        merge(cfg, tmp_path / "o", registry=test_registry())
    assert not (tmp_path / "o").exists()
