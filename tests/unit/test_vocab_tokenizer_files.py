"""vocab: union reads tokenizer files as untrusted input: inside the model folder,
regular files, strict JSON, typed entries; every problem a CheckpointError naming
the file (never a KeyError/TypeError traceback, never a read outside the folder)."""

from __future__ import annotations

import json
import os

import pytest

from pactframe.errors import CheckpointError
from pactframe.vocab import read_added_tokens


def _write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


def test_a_well_formed_tokenizer_json_gives_vocab_and_added_tokens(tmp_path):
    data = {
        "model": {"vocab": {"a": 0, "b": 1}},
        "added_tokens": [{"id": 2, "content": "<new>"}],
    }
    _write(tmp_path, "tokenizer.json", json.dumps(data))
    assert read_added_tokens(tmp_path) == {0: "a", 1: "b", 2: "<new>"}


def test_added_tokens_json_is_read_when_there_is_no_tokenizer_json(tmp_path):
    _write(tmp_path, "added_tokens.json", json.dumps({"<x>": 5}))
    assert read_added_tokens(tmp_path) == {5: "<x>"}
    assert read_added_tokens(tmp_path / "none") is None


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("tokenizer.json", "[1, 2]", "holds a JSON list"),
        ("tokenizer.json", '{"model": {"vocab": {"a": "zero"}}}', "non-negative integer id"),
        ("tokenizer.json", '{"model": {"vocab": {"a": -1}}}', "non-negative integer id"),
        ("tokenizer.json", '{"added_tokens": [{"content": "x"}]}', "non-negative integer id"),
        ("tokenizer.json", '{"added_tokens": 3}', "'added_tokens' must be a list"),
        ("tokenizer.json", '{"a": 1, "a": 2}', "repeats the key"),
        ("tokenizer.json", "{not json", "tokenizer file"),
        ("added_tokens.json", '["<x>"]', "holds a JSON list"),
        ("added_tokens.json", '{"<x>": true}', "non-negative integer id"),
    ],
)
def test_a_malformed_tokenizer_file_is_a_checkpoint_error_naming_it(tmp_path, name, text, fragment):
    _write(tmp_path, name, text)
    with pytest.raises(CheckpointError) as info:
        read_added_tokens(tmp_path)
    assert fragment in str(info.value)
    assert name in str(info.value)


def test_a_tokenizer_symlink_out_of_the_model_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"model": {"vocab": {"s3cr3t": 0}}}), encoding="utf-8")
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(secret, folder / "tokenizer.json")
    with pytest.raises(CheckpointError) as info:
        read_added_tokens(folder)
    assert "s3cr3t" not in str(info.value)
    assert "tokenizer" in str(info.value)
