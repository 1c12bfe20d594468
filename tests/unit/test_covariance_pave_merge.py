"""End to end: covariances collected from torch models feed a PAVE merge from files.

Checks the plumbing between the covariance file and the pipeline (keys are the
checkpoints' state-dict keys; the ``conv1d`` layout reaches PAVE as
``input_axis = 0``), and one independent identity: with ``rho = 1`` PAVE keeps
every component, so PAVE + Task Arithmetic equals plain Task Arithmetic,
``theta_0 + lambda sum_t Delta_t``, computed here directly.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pactframe.api import merge
from pactframe.covariance import collect_covariances
from tests.unit.test_covariance_collect import Conv1D

WIDTH = 8


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.conv = Conv1D(6, WIDTH)

    def forward(self, x):
        h = self.inp(x)
        return self.conv(self.attn(h, h, h)[0])


def _perturbed(base: Toy, seed: int) -> Toy:
    model = Toy().double()
    model.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _write_task(tmp_path, base: Toy, name: str, seed: int) -> dict:
    model = _perturbed(base, seed)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / f"{name}.safetensors"),
    )
    g = torch.Generator().manual_seed(100 + seed)
    batches = [torch.randn(2, 7, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    collect_covariances(model, batches).save(
        tmp_path / f"cov-{name}.safetensors", source=f"{name}, train"
    )
    return {
        "name": name,
        "path": str(tmp_path / f"{name}.safetensors"),
        "covariance": str(tmp_path / f"cov-{name}.safetensors"),
    }


def _setup(tmp_path):
    torch.manual_seed(0)
    base = Toy().double()
    save_file(
        {k: v.contiguous() for k, v in base.state_dict().items()},
        str(tmp_path / "base.safetensors"),
    )
    models = [_write_task(tmp_path, base, n, s) for n, s in (("a", 1), ("b", 2))]
    return models


def _config(tmp_path, models, rho):
    return {
        "base": str(tmp_path / "base.safetensors"),
        "models": models,
        "preprocessors": [{"name": "pave", "rho": rho}],
        "merger": {"name": "task_arithmetic", "scaling": 0.5},
        "compute_dtype": "float64",
    }


def _records(report) -> dict:
    return {
        t["name"]: {r["source"]: r["data"] for r in t.get("records", [])} for t in report["tensors"]
    }


def test_collected_covariances_drive_a_pave_merge_with_every_layout(tmp_path):
    models = _setup(tmp_path)
    report = merge(_config(tmp_path, models, 0.75), tmp_path / "out")
    pave = {name: rec["pave"] for name, rec in _records(report).items() if "pave" in rec}
    for key, R in (
        ("inp.weight", 5),
        ("attn.in_proj_weight", WIDTH),
        ("attn.out_proj.weight", WIDTH),
        ("conv.weight", 6),
    ):
        assert pave[key]["action"] == "purified", key
        assert pave[key]["scope"] == "model" and pave[key]["R"] == R
        assert set(pave[key]["tasks"]) == {"a", "b"}
    assert pave["inp.bias"]["action"] == "passed_through"


def test_full_rank_pave_merge_equals_plain_task_arithmetic(tmp_path):
    models = _setup(tmp_path)
    merge(_config(tmp_path, models, 1.0), tmp_path / "out")
    merged = {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        merged.update(load_file(str(f)))
    base = load_file(str(tmp_path / "base.safetensors"))
    tasks = [load_file(m["path"]) for m in models]
    for key, b in base.items():
        expected = b + 0.5 * sum(t[key] - b for t in tasks)
        torch.testing.assert_close(merged[key].double(), expected, rtol=1e-9, atol=1e-10)
