"""Issue 18, the reading half: every bad input a careless user or an attacker can
hand pactframe's readers, through the CLI. Each case asserts exit code 1, the first
line of the message and what it names, and that no output and no temporary folder
is left. Each of these merged silently, leaked file bytes, hung or raised a
traceback before the header validator, the index checks, the ``nonfinite`` policy
and the covariance checks existed."""

from __future__ import annotations

import json
import os
import threading
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from pactframe.cli import main
from pactframe.covariance_io import save_covariances
from tests._safetensors_craft import mutate_entry, raw_file, rewrite, split_file
from tests.integration._pipeline_helpers import load_output, write_models

Q = "layers.0.attn.q.weight"


# ------------------------------------------------------------ helpers
def _config(tmp_path, bp, paths, covariances=None, **extra):
    data = {
        "base": str(bp),
        "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
        "merger": {"name": "task_arithmetic", "scaling": 0.3},
        "fallback": "average",
        **extra,
    }
    for entry, cov in zip(data["models"], covariances or []):
        if cov is not None:
            entry["covariance"] = str(cov)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _no_output(tmp_path, out):
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if ".pactframe-" in p.name]
    assert not leftovers, leftovers


def _merge_fails(tmp_path, capsys, cfg, first_line, *needles):
    """``pactframe merge`` exits 1, its message's first line starts with ``first_line``,
    the message holds every needle, and there is no output or temporary folder."""
    out = tmp_path / "out"
    code = main(["merge", str(cfg), str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    # the progress bar may come first on stderr; the message starts at the error line
    message = [line for line in err.splitlines() if line.startswith("pactframe merge: error:")]
    assert message and message[0].startswith(first_line), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    _no_output(tmp_path, out)
    return err


def _validate_fails(capsys, cfg, *needles, problems=1):
    code = main(["validate", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.splitlines()[0] == f"{problems} problem(s) in {cfg}:", err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


CHECKPOINT_PROBLEM = "pactframe merge: error: 1 problem(s) in the checkpoints:"


def _sharded_models(tmp_path):
    base, fts, bp, paths = write_models(tmp_path / "in", sharded=True)
    return bp, paths


# ------------------------------------------------------------ item 2: reads outside the folder
def test_index_path_into_another_model_is_refused(tmp_path, capsys):
    bp, paths = _sharded_models(tmp_path)
    index = paths[0] / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    # main merged the other model's shard without a word
    data["weight_map"] = {k: f"../ft1/{v}" for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    cfg = _config(tmp_path, bp, paths)
    shard = "'../ft1/model-00001-of-00002.safetensors'"
    _validate_fails(capsys, cfg, shard, "'..' are refused")
    _merge_fails(tmp_path, capsys, cfg, CHECKPOINT_PROBLEM, str(index), shard)


def test_index_path_to_a_system_file_is_refused_without_reading_it(tmp_path, capsys):
    bp, paths = _sharded_models(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("password=correct-horse\n")
    index = paths[0] / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = dict.fromkeys(data["weight_map"], str(secret))
    index.write_text(json.dumps(data))
    cfg = _config(tmp_path, bp, paths)
    err = _merge_fails(tmp_path, capsys, cfg, CHECKPOINT_PROBLEM, "absolute paths")
    assert "correct-horse" not in err
    assert str(int.from_bytes(b"password", "little")) not in err  # main printed this


# ------------------------------------------------------------ item 3: silent corruption
def _first_tensor(path):
    header, _ = split_file(path)
    return min(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0]
    )


def test_negative_offsets_are_refused(tmp_path, capsys):
    bp, paths = write_models(tmp_path / "in")[2:]
    key = _first_tensor(paths[0])
    header, _ = split_file(paths[0])
    n = header[key]["data_offsets"][1]
    # main read the header's JSON bytes as this tensor's weights and exited 0
    mutate_entry(paths[0], key, data_offsets=[-n, 0])
    _merge_fails(
        tmp_path,
        capsys,
        _config(tmp_path, bp, paths),
        CHECKPOINT_PROBLEM,
        str(paths[0]),
        f"tensor {key!r}",
        f"got [-{n}, 0]",
    )


def test_overlapping_offsets_are_refused(tmp_path, capsys):
    bp, paths = write_models(tmp_path / "in")[2:]
    header, data = split_file(paths[0])
    # two same-size tensors made to share bytes
    header["layers.1.attn.q.weight"]["data_offsets"] = header[Q]["data_offsets"]
    rewrite(paths[0], header, data)
    _merge_fails(
        tmp_path, capsys, _config(tmp_path, bp, paths), CHECKPOINT_PROBLEM, "overlaps tensor"
    )


def test_duplicate_header_keys_are_refused(tmp_path, capsys):
    bp, paths = write_models(tmp_path / "in")[2:]
    header, data = split_file(paths[0])
    text = json.dumps(header)
    dup = json.dumps({Q: header[Q]})[1:-1]
    paths[0].write_bytes(raw_file((text[:-1] + ", " + dup + "}").encode(), data))
    _merge_fails(
        tmp_path, capsys, _config(tmp_path, bp, paths), CHECKPOINT_PROBLEM, f"repeats the key {Q!r}"
    )


def test_trailing_bytes_are_refused(tmp_path, capsys):
    bp, paths = write_models(tmp_path / "in")[2:]
    with open(paths[1], "ab") as f:
        f.write(b"\0" * 16)
    _merge_fails(
        tmp_path,
        capsys,
        _config(tmp_path, bp, paths),
        CHECKPOINT_PROBLEM,
        str(paths[1]),
        "16 byte(s) after the last tensor",
    )


# ------------------------------------------------------------ item 4: NaN / Inf
def _poison(path, key, value):
    sd = load_file(str(path))
    sd[key] = sd[key].clone()
    sd[key][1, 2] = value
    save_file(sd, str(path))


@pytest.mark.parametrize(
    ("merger", "value"),
    [
        ("task_arithmetic", float("nan")),
        ("ties", float("nan")),
        ("emr", float("nan")),
        ("emr", float("inf")),
        ("tsv_m", float("nan")),
        ("iso_c", float("nan")),
    ],
)
def test_nonfinite_weights_are_refused_before_any_math(tmp_path, capsys, merger, value):
    bp, paths = write_models(tmp_path / "in")[2:]
    _poison(paths[1], Q, value)
    cfg = _config(tmp_path, bp, paths, merger=merger)
    what = "1 NaN and 0 infinite" if value != value else "0 NaN and 1 infinite"
    first = f"pactframe merge: error: model 't1': tensor {Q!r} in {str(paths[1])!r} holds {what}"
    err = _merge_fails(tmp_path, capsys, cfg, first + " value(s) (first at index [1, 2]).")
    assert "nonfinite: warn" in err  # says how to merge anyway


def test_nonfinite_warn_and_ignore_merge_anyway(tmp_path, capsys):
    from pactframe.errors import NonFiniteWarning

    bp, paths = write_models(tmp_path / "in")[2:]
    _poison(paths[0], Q, float("nan"))
    out = tmp_path / "warned"
    cfg = _config(tmp_path, bp, paths, nonfinite="warn")
    with pytest.warns(NonFiniteWarning) as caught:
        assert main(["merge", str(cfg), str(out)]) == 0
    assert len(caught) == 1
    assert str(caught[0].message).startswith(
        f"model 't0': tensor {Q!r} in {str(paths[0])!r} holds 1 NaN and 0 infinite value(s)"
    )
    assert torch.isnan(load_output(out)[Q][1, 2])  # task arithmetic spreads the NaN
    cfg = _config(tmp_path, bp, paths, nonfinite="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        assert main(["merge", str(cfg), str(tmp_path / "ignored")]) == 0


def test_an_unknown_nonfinite_policy_is_a_config_problem(tmp_path, capsys):
    bp, paths = write_models(tmp_path / "in")[2:]
    cfg = _config(tmp_path, bp, paths, nonfinite="skip")
    _validate_fails(capsys, cfg, "nonfinite: must be one of error, warn, ignore", "'skip'")


def _covariances(tmp_path, name, bad):
    """A covariance file for every 2-D weight of the tiny model (d_in = 8), with
    ``bad`` in place of the q weight's."""
    g = torch.Generator().manual_seed(3)
    covs = {}
    for key in ("layers.0.attn.q.weight", "layers.0.mlp.up.weight", "layers.1.attn.q.weight"):
        x = torch.randn(32, 8, generator=g, dtype=torch.float64)
        covs[key] = x.T @ x / 32
    covs[Q] = bad
    path = tmp_path / name
    save_covariances(path, covs, dict.fromkeys(covs, "linear"), dict.fromkeys(covs, 32))
    return path


def _nonsymmetric():
    c = torch.eye(8, dtype=torch.float64)
    c[0, 7] = 0.5
    return c


def _nan_cov():
    c = torch.eye(8, dtype=torch.float64)
    c[2, 2] = float("nan")
    return c


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (_nan_cov(), "it holds 1 NaN and 0 infinite value(s)"),
        (torch.zeros(8, 8, dtype=torch.float64), "it is all zero"),
        (
            -torch.eye(8, dtype=torch.float64),
            "it is not positive semi-definite: smallest eigenvalue -1,",
        ),
        (
            torch.diag(torch.tensor([1.0, 1, 1, 1, 1, 1, 1, -0.5], dtype=torch.float64)),
            "it is not positive semi-definite: smallest eigenvalue -0.5, largest 1",
        ),
        (_nonsymmetric(), "it is not symmetric"),
    ],
    ids=["nan", "zero", "negative-definite", "indefinite", "non-symmetric"],
)
def test_bad_covariances_are_named_by_validate_and_refused_by_merge(
    tmp_path, capsys, bad, needle
):
    bp, paths = write_models(tmp_path / "in")[2:]
    cov = _covariances(tmp_path, "cov-t1.safetensors", bad)
    cfg = _config(tmp_path, bp, paths, covariances=[None, cov])
    named = f"model 't1': covariance file {str(cov)!r}: entry {Q!r}: {needle}"
    _validate_fails(capsys, cfg, named)
    _merge_fails(tmp_path, capsys, cfg, CHECKPOINT_PROBLEM, named)


def test_good_covariances_pass(tmp_path, capsys):
    bp, paths = write_models(tmp_path / "in")[2:]
    x = torch.randn(4, 8, dtype=torch.float64)
    low_rank = x.T @ x / 4  # singular (rank 4) but PSD: fine
    cov = _covariances(tmp_path, "cov-t1.safetensors", low_rank.float())
    cfg = _config(tmp_path, bp, paths, covariances=[None, cov])
    assert main(["validate", str(cfg)]) == 0, capsys.readouterr().err


# ------------------------------------------------------------ item 5: a FIFO shard
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_a_fifo_shard_does_not_hang_validate(tmp_path, capsys):
    bp, paths = _sharded_models(tmp_path)
    shard = paths[0] / "model-00002-of-00002.safetensors"
    shard.unlink()
    os.mkfifo(shard)
    cfg = _config(tmp_path, bp, paths)
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(main(["validate", str(cfg)])))
    worker.daemon = True
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "validate blocked on a FIFO (main hung here)"
    err = capsys.readouterr().err
    assert codes == [1]
    assert err.splitlines()[0] == f"1 problem(s) in {cfg}:"
    assert f"{str(shard)!r} is a FIFO (named pipe), not a regular file" in err


# ------------------------------------------------------------ item 7: tracebacks -> one error
def _header_case(path, case):
    header, data = split_file(path)
    if case == "header-list":
        path.write_bytes(raw_file([1, 2, 3], data))
    elif case == "header-number":
        path.write_bytes(raw_file(42, data))
    elif case == "metadata-list":
        rewrite(path, {**header, "__metadata__": ["format", "pt"]}, data)
    elif case == "shape-negative":
        mutate_entry(path, Q, shape=[-5, 0])
    elif case == "shape-2**63":
        mutate_entry(path, Q, shape=[2**63, 0])


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("header-list", "its header must be a JSON object"),
        ("header-number", "its header must be a JSON object"),
        ("metadata-list", "the header's __metadata__ must be an object of strings"),
        ("shape-negative", f"tensor {Q!r}: its shape must be a list"),
        ("shape-2**63", f"tensor {Q!r}: its shape must be a list"),
    ],
)
def test_malformed_headers_are_one_clear_error(tmp_path, capsys, case, needle):
    bp, paths = write_models(tmp_path / "in")[2:]
    _header_case(paths[0], case)
    cfg = _config(tmp_path, bp, paths)
    _validate_fails(capsys, cfg, str(paths[0]), needle)
    _merge_fails(tmp_path, capsys, cfg, CHECKPOINT_PROBLEM, str(paths[0]), needle)


def test_a_weight_map_that_is_a_list_is_one_clear_error(tmp_path, capsys):
    bp, paths = _sharded_models(tmp_path)
    index = paths[1] / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = sorted(set(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    cfg = _config(tmp_path, bp, paths)
    _validate_fails(capsys, cfg, str(index), "its 'weight_map' is a list, not an object")
    _merge_fails(tmp_path, capsys, cfg, CHECKPOINT_PROBLEM, "'weight_map' is a list")


# ------------------------------------------------------------ item 8: base-folder symlinks
def test_a_base_file_linked_out_of_the_folder_is_never_copied(tmp_path, capsys):
    bp, paths = _sharded_models(tmp_path)
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY-----\n")
    (bp / "tokenizer_config.json").symlink_to(secret)
    cfg = _config(tmp_path, bp, paths)
    # main copied the secret into the merged model as tokenizer_config.json
    err = _merge_fails(
        tmp_path,
        capsys,
        cfg,
        CHECKPOINT_PROBLEM,
        "'tokenizer_config.json'",
        "resolving outside the model folder",
        "output.copy_files: false",
    )
    assert "PRIVATE KEY" not in err
    _validate_fails(capsys, cfg, "'tokenizer_config.json'")
    # without copying files the link is never followed, and the merge goes ahead
    cfg = _config(tmp_path, bp, paths, output={"copy_files": False})
    out = tmp_path / "nocopy"
    assert main(["merge", str(cfg), str(out)]) == 0, capsys.readouterr().err
    assert not (out / "tokenizer_config.json").exists()


# ------------------------------------------------------------ materialize reads a modulator file
@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        ({"tasks": "not json"}, "'tasks'/'shapes' metadata is missing or not JSON"),
        ({"tasks": '{"a": 1}'}, "'tasks' must be a list of task names"),
        ({"shapes": '{"layers.0.attn.q.weight": [9, 9]}'}, "do not match 'shapes'"),
    ],
    ids=["not-json", "tasks-object", "wrong-shape"],
)
def test_a_corrupt_modulator_file_is_one_clear_error(tmp_path, capsys, metadata, needle):
    bp, paths = write_models(tmp_path / "in")[2:]
    merged = tmp_path / "merged"
    assert main(["merge", str(_config(tmp_path, bp, paths, merger="emr")), str(merged)]) == 0
    modulators = merged / "task_modulators.safetensors"
    header, data = split_file(modulators)
    header["__metadata__"].update(metadata)
    rewrite(modulators, header, data)
    capsys.readouterr()
    dest = tmp_path / "t0"
    assert main(["materialize", str(merged), "--task", "t0", str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(
        f"pactframe materialize: error: {str(modulators)!r} is not a usable task-modulator file"
    )
    assert needle in err
    _no_output(tmp_path, dest)
