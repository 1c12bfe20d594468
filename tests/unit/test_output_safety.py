"""pactframe.output_safety and the bounded message helpers of pactframe.errors."""

from __future__ import annotations

import os
import time

import pytest

from pactframe.errors import OutputPathError, short_repr, short_text
from pactframe.output_safety import check_output, sweep_stale, temporary_path


def test_short_repr_is_bounded_for_huge_and_nested_values():
    nested: list = ["x" * 50] * 10
    for _ in range(40):  # 10**40 leaves if expanded
        nested = [nested] * 10
    start = time.perf_counter()
    for value in ("y" * 10**6, nested, 10**5000, {i: "z" * 100 for i in range(10**4)}):
        text = short_repr(value)
        assert len(text) <= 120
    assert time.perf_counter() - start < 1
    assert short_repr(10**5000) == "<an int of about 5001 digits>"  # 10**5000 has 5001
    assert short_repr("abc") == "'abc'" and short_repr([1, 2]) == "[1, 2]"
    assert short_repr(list(range(100))) == "[0, 1, 2, 3, 4, 5, ...]"


def test_short_text_keeps_both_ends():
    text = short_text("a" * 500 + "END", 100)
    assert len(text) <= 100 and text.endswith("END") and " ... " in text
    assert short_text("short", 100) == "short"


def test_files_count_as_inputs(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("x")
    with pytest.raises(OutputPathError, match="is the same path as the data"):
        check_output(tmp_path / "sub" / ".." / "text.txt", [("the data", data)])
    with pytest.raises(OutputPathError, match="contains the data"):
        check_output(tmp_path, [("the data", data)])
    check_output(tmp_path / "other.txt", [("the data", data)])  # a sibling is fine


def test_links_inside_an_input_folder_protect_their_targets(tmp_path):
    """A Hugging Face cache snapshot links its files into blobs/: an output over the
    blobs would destroy the snapshot's contents."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc123").write_bytes(b"weights")
    snapshot = tmp_path / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blobs / "abc123")
    with pytest.raises(OutputPathError, match="file 'model.safetensors' \\(a link to\\)"):
        check_output(blobs, [("the base model", snapshot)])
    check_output(tmp_path / "merged", [("the base model", snapshot)])


def test_protected_folders_may_hold_the_output_but_not_be_it(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    check_output(job / "merged", protected=[("the config's folder", job)])
    for out in (job, tmp_path):
        with pytest.raises(OutputPathError, match="the config's folder"):
            check_output(out, protected=[("the config's folder", job)])


def test_temporary_names_carry_host_and_process(tmp_path):
    tmp = temporary_path(tmp_path / "out", "tmp")
    assert tmp.parent == tmp_path and tmp.name.startswith(".out.pactframe-tmp-")
    assert f"-{os.getpid()}-" in tmp.name
    tmp.mkdir()
    assert sweep_stale(tmp_path / "out") == []  # our own, running: silently kept
    assert tmp.exists()
