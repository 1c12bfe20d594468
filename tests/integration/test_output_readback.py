"""Every merged output, read back through its own index by pactframe's reader, holds
every planned tensor with the values of an in-memory merge of the same config
(issue 18, item 9: an index missing the last tensor of the last shard passed the
whole suite, because no test read an output back through its index)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pactframe.api import load_spec
from pactframe.errors import CheckpointError
from pactframe.io.reader import INDEX_NAME, CheckpointReader
from pactframe.pipeline import MergePipeline
from tests._safetensors_craft import split_file
from tests.integration._pipeline_helpers import load_output, test_registry, write_models

MIXED = {"layers.0.attn.q.weight": torch.float16, "lm_head.weight": torch.bfloat16}


def _spec(bp, paths, merger, shard_size):
    return load_spec(
        {
            "base": str(bp),
            "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
            "merger": merger,
            "fallback": "average",
            "output": {"shard_size": shard_size},
        },
        registry=test_registry(with_builtins=True),
    )


@pytest.mark.parametrize("merger", ["t_sum", "ties", "emr"])
@pytest.mark.parametrize("shard_size", [10**9, 700, 1], ids=["one-shard", "few", "one-per-tensor"])
def test_an_output_read_back_through_its_index_holds_every_tensor(
    tmp_path, merger, shard_size
):
    base, _, bp, paths = write_models(tmp_path / "in", tasks=3, sharded=True, dtypes=MIXED)
    out = tmp_path / "out"
    MergePipeline(_spec(bp, paths, merger, shard_size)).run(out)
    expected, _ = MergePipeline(_spec(bp, paths, merger, shard_size)).merge_to_dict()
    assert sorted(expected) == sorted(base)

    reader = CheckpointReader(out, role="merged model")
    assert sorted(reader.keys()) == sorted(base)
    for key, want in expected.items():
        got = reader.load(key)
        assert got.dtype == want.dtype and torch.equal(got, want), key

    shards = sorted(p.name for p in out.glob("model*.safetensors"))
    if shard_size == 10**9:
        assert shards == ["model.safetensors"] and not (out / INDEX_NAME).exists()
        return
    assert len(shards) > 1
    # the index, read as plain JSON, against what the shards hold (safetensors' own reader)
    weight_map = json.loads((out / INDEX_NAME).read_text())["weight_map"]
    held = {key: name for name in shards for key in load_file(str(out / name))}
    assert weight_map == held
    assert sorted(load_output(out)) == sorted(base)


def test_an_index_missing_the_last_tensor_of_the_last_shard_is_refused(tmp_path):
    _, _, bp, paths = write_models(tmp_path / "in", sharded=True)
    out = tmp_path / "out"
    MergePipeline(_spec(bp, paths, "t_sum", 700)).run(out)
    index = json.loads((out / INDEX_NAME).read_text())
    last_shard = max(index["weight_map"].values())
    header, _ = split_file(out / last_shard)
    last_key = max(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    del index["weight_map"][last_key]
    (out / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"does not list tensor '{last_key}'"):
        CheckpointReader(out, role="merged model")
