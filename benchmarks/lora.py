"""PACT-TSVM on three LoRA adapters: factored task vectors versus materialised fine-tunes.

    python benchmarks/lora.py                    # hidden 1024, 2 layers, rank 16
    python benchmarks/lora.py --layers 4 --rank 16 --output table.md

Builds, under a temporary folder, a Llama-shaped base (``--hidden`` 1024,
intermediate ``2.75 * hidden``, ``--layers`` decoder layers, vocabulary 8192,
random float32 weights) and three PEFT-format LoRA adapters of rank ``--rank``
on every linear layer (q, k, v, o, gate, up, down; ``lora_alpha = 2 r``), plus
the three fine-tuned checkpoints ``W_0 + s B A`` written out in full, the way
one merges adapters with a tool that only reads checkpoints. Then, each in a
fresh child process so that peak RSS is its own, the same ``pact_tsv_m`` merge
(``output`` to a temporary folder, device ``cpu``, float32) runs on:

- ``factored``: the three adapter folders: task vectors stay ``B A`` factors;
  PACT filters the factors and TSV-M decomposes them by QR + ``r x r`` SVD;
- ``materialised``: the three full checkpoints: dense task vectors, dense SVDs.

Reported: wall time of the merge (pipeline construction to the committed
output), peak RSS of the child, the speed-up, and the largest difference between
the two merged models relative to the largest merged delta. The SVD backbones
are rank-revealing on both paths, with the same rank rule (docs/lora.md,
"Rank-deficient task vectors"), so the two paths compute the same merge even
though TSV-M's per-task budget (``min(m, n) / 3``, 341 for 1024) exceeds the
adapters' rank; the difference column is float32 rounding (in float64 the two
paths agree to 1e-9 in ``tests/unit/test_lowrank.py``).

The issue's target: the factored path at least 5x faster. The header records
the machine, thread count and ``uptime`` (load), because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _llama import LLAMA_LINEAR, llama_shapes
from safetensors.torch import load_file, save_file

LINEAR = LLAMA_LINEAR


def _shapes(hidden: int, layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    return llama_shapes(hidden, int(hidden * 2.75), layers, vocab)


def build(root: Path, hidden: int, layers: int, rank: int, vocab: int = 8192) -> None:
    g = torch.Generator().manual_seed(0)
    base = {}
    for key, shape in _shapes(hidden, layers, vocab).items():
        base[key] = (
            torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
        )
    (root / "base").mkdir()
    save_file(base, str(root / "base" / "model.safetensors"))
    alpha = 2 * rank
    for t in range(3):
        folder = root / f"adapter{t}"
        folder.mkdir()
        tensors, full = {}, dict(base)
        for key, w in base.items():
            module = key[: -len(".weight")]
            if module.rsplit(".", 1)[-1] not in LINEAR:
                continue
            A = torch.randn(rank, w.shape[1], generator=g) / w.shape[1] ** 0.5
            B = torch.randn(w.shape[0], rank, generator=g) * 0.01
            tensors[f"base_model.model.{module}.lora_A.weight"] = A
            tensors[f"base_model.model.{module}.lora_B.weight"] = B
            full[key] = w + (alpha / rank) * (B @ A)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": list(LINEAR),
            "fan_in_fan_out": False,
            "bias": "none",
        }
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (root / f"full{t}").mkdir()
        save_file(full, str(root / f"full{t}" / "model.safetensors"))


def child(root: Path, mode: str, out: Path) -> None:
    from pactframe.pipeline import MergePipeline

    prefix = "adapter" if mode == "factored" else "full"
    config = {
        "base": str(root / "base"),
        "models": [{"name": f"t{t}", "path": str(root / f"{prefix}{t}")} for t in range(3)],
        "merger": "pact_tsv_m",
        "device": "cpu",
        "compute_dtype": "float32",
        "output": {"copy_files": False},
    }
    start = time.perf_counter()
    MergePipeline.from_config(config).run(out)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"mode": mode, "wall_s": wall, "peak_rss_bytes": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--output", help="also write the table (markdown) here")
    ap.add_argument("--child", nargs=3, metavar=("ROOT", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], Path(args.child[2]))
        return
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    header = [
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"uptime before: {uptime}",
        f"base: Llama-shaped, hidden {args.hidden}, {args.layers} layers; three rank-"
        f"{args.rank} adapters on every linear layer; merger pact_tsv_m, float32, cpu",
    ]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="pactframe-lora-bench-") as tmp:
        root = Path(tmp)
        build(root, args.hidden, args.layers, args.rank)
        for mode in ("factored", "materialised"):
            res = subprocess.run(
                [sys.executable, __file__, "--child", str(root), mode, str(root / f"out-{mode}")],
                capture_output=True,
                text=True,
                check=True,
            )
            rows[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        a = load_file(str(root / "out-factored" / "model.safetensors"))
        b = load_file(str(root / "out-materialised" / "model.safetensors"))
        base = load_file(str(root / "base" / "model.safetensors"))
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        scale = max(float((b[k] - base[k]).abs().max()) for k in b)
    header.append(
        f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}"
    )
    lines = [
        "| path | wall (s) | peak RSS (MiB) |",
        "|---|---:|---:|",
    ]
    for mode, r in rows.items():
        lines.append(f"| {mode} | {r['wall_s']:.2f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
    speedup = rows["materialised"]["wall_s"] / rows["factored"]["wall_s"]
    lines.append("")
    lines.append(f"speed-up (materialised / factored): {speedup:.1f}x (target >= 5x)")
    lines.append(
        f"max |factored - materialised| / max |merged delta|: {diff / scale:.3g} "
        "(float32 rounding: the same merge, see the docstring)"
    )
    text = "\n".join(header + [""] + lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
