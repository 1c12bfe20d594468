"""mergekit configs run unchanged by both tools: agreement of pactframe with mergekit.

Generates small Llama-shaped checkpoints (a base and three fine-tunes, fp16, HF
``config.json``), writes one mergekit config per shared method, and runs the SAME
YAML file through ``mergekit-yaml`` and ``pactframe merge`` (which converts it, see
docs/mergekit.md). Reports, per method, the largest absolute difference between
the two outputs and the share of elements that are not bit-identical.

The configs use per-model weights, ``lambda``, ``density``, ``normalize``,
``int8_mask``, slerp's ``t`` with filters and gradient lists, and ``dtype:
float32`` with ``out_dtype: float16``. DARE methods draw random masks with
different generators in the two tools: for them the script checks that both run
and reports the difference of the outputs relative to the task vectors' size.

mergekit lives in its own environment (never in pactframe's)::

    python3 -m venv --system-site-packages /tmp/mkvenv
    /tmp/mkvenv/bin/pip install mergekit==0.1.5
    python benchmarks/mergekit_configs.py --mergekit /tmp/mkvenv/bin/mergekit-yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_mergekit as vm  # noqa: E402  (the checkpoint generator and comparison)

SMALL = dict(vm.LLAMA, hidden_size=128, intermediate_size=256, num_hidden_layers=4)
SMALL.update(num_attention_heads=4, num_key_value_heads=4, vocab_size=1000)


def mergekit_configs(folders: list[Path]) -> dict[str, dict]:
    base, ft = str(folders[0]), [str(f) for f in folders[1:]]
    common = {"dtype": "float32", "out_dtype": "float16"}
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": ft[0], "parameters": {"weight": 0.6}},
                {"model": ft[1], "parameters": {"weight": 0.4}},
            ],
            **common,
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                {"model": base},
                {"model": ft[0], "parameters": {"weight": 0.7}},
                {"model": ft[1], "parameters": {"weight": 0.3}},
                {"model": ft[2], "parameters": {"weight": 0.5}},
            ],
            "parameters": {"lambda": 0.9},
            **common,
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": ft[0], "parameters": {"weight": 1.0, "density": 0.25}},
                {"model": ft[1], "parameters": {"weight": 0.6, "density": 0.25}},
                {"model": ft[2], "parameters": {"weight": 0.3, "density": 0.25}},
            ],
            "parameters": {"normalize": True, "int8_mask": True},
            **common,
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": base,
            "slices": [
                {
                    "sources": [
                        {"model": base, "layer_range": [0, SMALL["num_hidden_layers"]]},
                        {"model": ft[0], "layer_range": [0, SMALL["num_hidden_layers"]]},
                    ]
                }
            ],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                    {"value": 0.5},
                ]
            },
            **common,
        },
        "dare_ties": {
            "merge_method": "dare_ties",
            "base_model": base,
            "models": [{"model": f, "parameters": {"weight": 0.5, "density": 0.5}} for f in ft],
            **common,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit", default="/tmp/mkvenv/bin/mergekit-yaml")
    ap.add_argument("--workdir", default="/tmp/pactframe-mergekit-configs")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if not Path(args.mergekit).exists():
        print(f"mergekit-yaml not found at {args.mergekit}; see the module docstring.")
        return 2
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    vm.LLAMA = SMALL
    folders = vm.generate(root, tasks=3, shards=1)
    pactframe = [sys.executable, "-m", "pactframe"]
    results = {}
    for method, config in mergekit_configs(folders).items():
        cfg = root / f"{method}.yml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        out_mk, out_pf = root / f"mergekit-{method}", root / f"pactframe-{method}"
        vm.run_child([args.mergekit, str(cfg), str(out_mk), "--quiet", "--no-copy-tokenizer"])
        vm.run_child([*pactframe, "merge", str(cfg), str(out_pf), "--quiet", "--force"])
        results[method] = vm.compare(out_pf, out_mk)
        r = results[method]
        print(
            f"{method:16s} same keys: {r['same_keys']}  max |pactframe - mergekit|: "
            f"{r['max_abs_diff']:.3g}  not bit-identical: {100 * r['differing_fraction']:.3f}% "
            f"of {r['elements']:,}"
        )
    print("(fine-tune deltas are about 0.002 per entry; fp16 outputs: one ulp at |w| ~ 0.05 "
          "is ~3e-5)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
