"""``pactframe collect-covariance``: factory loading, the file it writes, clear errors."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from pactframe.cli import main
from pactframe.covariance_io import load_covariance, read_covariance_header, read_covariance_source

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make(rows="6", seed="0"):
        torch.manual_seed(int(seed))
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        g = torch.Generator().manual_seed(1)
        data = torch.randn(int(rows), 3, generator=g, dtype=torch.float64)
        return model, [data[:2], data[2:]]

    def not_a_pair():
        return 3
    """
)


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "task_factory.py"
    path.write_text(FACTORY)
    return path


def test_factory_file_gives_a_covariance_file_with_hand_computed_values(tmp_path, factory):
    out = tmp_path / "cov.safetensors"
    rc = main(
        [
            "collect-covariance",
            "--factory",
            f"{factory}:make",
            "--factory-arg",
            "rows=5",
            "--output",
            str(out),
            "--dtype",
            "float64",
            "--source",
            "toy, train split",
        ]
    )
    assert rc == 0
    header = read_covariance_header(out)
    assert {k: (e.shape, e.layout, e.num_samples) for k, e in header.items()} == {
        "0.weight": ((3, 3), "linear", 5),
        "2.weight": ((4, 4), "linear", 5),
    }
    assert read_covariance_source(out) == "toy, train split"
    # independent recomputation of both layers' inputs
    namespace: dict = {}
    exec(FACTORY, namespace)
    model, batches = namespace["make"](rows="5")
    x = torch.cat(batches).numpy()
    h = np.tanh(x @ model[0].weight.detach().numpy().T + model[0].bias.detach().numpy())
    np.testing.assert_allclose(load_covariance(out, "0.weight").numpy(), x.T @ x / 5, rtol=1e-12)
    np.testing.assert_allclose(load_covariance(out, "2.weight").numpy(), h.T @ h / 5, rtol=1e-12)


def test_summary_lists_counts_and_an_existing_file_needs_force(tmp_path, factory, capsys):
    out = tmp_path / "cov.safetensors"
    assert main(["collect-covariance", "--factory", f"{factory}:make", "-o", str(out)]) == 0
    assert "wrote 2 covariances" in capsys.readouterr().out
    assert main(["collect-covariance", "--factory", f"{factory}:make", "-o", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (
        main(
            [
                "collect-covariance",
                "--factory",
                f"{factory}:make",
                "-o",
                str(out),
                "--force",
                "--include",
                "^2",
            ]
        )
        == 0
    )
    assert list(read_covariance_header(out)) == ["2.weight"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--factory", "no_colon_here"], "must look like"),
        (["--factory", "{factory}:missing"], "has no function 'missing'"),
        (["--factory", "{factory}:not_a_pair"], "must return (model, batches)"),
        (["--factory", "surely_not_a_module_xyz:make"], "cannot import"),
        (["--factory", "{factory}:make", "--factory-arg", "oops"], "KEY=VALUE"),
        ([], "exactly one of"),
        (["--hf-model", "some/model"], "--text-file"),
    ],
)
def test_bad_invocations_exit_1_with_a_clear_message(tmp_path, factory, capsys, extra, message):
    args = [a.replace("{factory}", str(factory)) for a in extra]
    assert main(["collect-covariance", "-o", str(tmp_path / "c.safetensors"), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "pactframe collect-covariance: error" in err


def test_hf_path_without_transformers_says_what_to_install(tmp_path, monkeypatch, capsys):
    """The --hf-model path is import-guarded (transformers is absent or hidden here)."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    text = tmp_path / "train.txt"
    text.write_text("a line\n")
    rc = main(
        [
            "collect-covariance",
            "--hf-model",
            "some/model",
            "--text-file",
            str(text),
            "-o",
            str(tmp_path / "c.safetensors"),
        ]
    )
    assert rc == 1
    assert "pip install transformers" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()
