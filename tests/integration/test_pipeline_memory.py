"""The streaming bound: peak RSS grows with the largest tensor, not with the model.

Two merges run in fresh subprocesses: a tiny model (the baseline: interpreter, torch,
plugins) and a model with many layers. The extra peak RSS of the large merge must
stay within the plan's working-set estimate plus a fixed allocator margin, far below
the checkpoints' total size."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from pactframe.api import merge
    from pactframe.config import parse_config
    from pactframe.pipeline import MergePipeline
    from tests.integration._pipeline_helpers import test_registry

    root, layers, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    g = torch.Generator().manual_seed(0)
    # write each checkpoint in shards of 8 layers, freeing each shard once saved
    import os
    os.makedirs(root, exist_ok=True)
    for m in range(3):
        folder = f"{root}/m{m}"
        os.makedirs(folder, exist_ok=True)
        weight_map = {}
        for shard in range(layers // 8 + 1):
            part = {}
            for i in range(shard * 8, min(layers, shard * 8 + 8)):
                part[f"layers.{i}.weight"] = torch.randn(rows, cols, generator=g)
                part[f"layers.{i}.bias"] = torch.randn(rows, generator=g)
            if part:
                name = f"model-{shard:05d}.safetensors"
                save_file(part, f"{folder}/{name}")
                weight_map.update(dict.fromkeys(part, name))
            del part
        json.dump({"weight_map": weight_map}, open(f"{folder}/model.safetensors.index.json", "w"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = {"base": f"{root}/m0", "models": [{"name": "a", "path": f"{root}/m1"},
           {"name": "b", "path": f"{root}/m2"}], "merger": "t_sum", "fallback": "t_mean",
           "output": {"shard_size": "8MB"}}
    spec = parse_config(cfg, registry=test_registry())
    pipe = MergePipeline(spec)
    estimate = pipe.plan().memory_estimate()["working_set_bytes"]
    pipe.run(f"{root}/out")
    print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "before": before, "estimate": estimate}))
""")


def _run(tmp_path, name, layers, rows, cols):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / name), str(layers), str(rows), str(cols)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(__import__("pathlib").Path(__file__).parents[2]),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_is_bounded_by_the_largest_tensor(tmp_path):
    small = _run(tmp_path, "small", 2, 64, 64)
    big = _run(tmp_path, "big", 48, 512, 512)  # 48 MB per checkpoint, 144 MB read
    model_bytes = 48 * (512 * 512 + 512) * 4
    extra = big["peak"] - small["peak"]
    margin = 48 * 2**20  # allocator and reader-thread slack, independent of the model size
    assert extra <= big["estimate"] + margin, (extra, big["estimate"])
    assert extra < model_bytes  # less than ONE of the three checkpoints it read
