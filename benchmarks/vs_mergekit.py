"""pactframe vs mergekit on the same Llama-shaped checkpoints: wall time, peak RSS, agreement.

Generates a base and three fine-tunes (Llama layout, ~120M parameters each, fp16,
two shards each, HF ``config.json``), then runs ``pactframe merge`` and
``mergekit-yaml`` as child processes with Task Arithmetic and TIES, measuring each
child's wall time and peak RSS (``os.wait4``), and compares the outputs tensor by
tensor.

mergekit must live in its OWN environment (never in pactframe's)::

    python3 -m venv --system-site-packages /tmp/mkvenv      # reuses the CPU torch
    /tmp/mkvenv/bin/pip install mergekit==0.1.5
    python benchmarks/vs_mergekit.py --mergekit /tmp/mkvenv/bin/mergekit-yaml

(or ``python3 -m venv /tmp/mkvenv && /tmp/mkvenv/bin/pip install torch==2.13.0
mergekit==0.1.5`` for a fully separate one).

Semantics mapping (where both compute the same thing):

- Task Arithmetic: pactframe ``task_arithmetic`` with ``scaling: L``
  (``theta_0 + L * sum_t Delta_t``) = mergekit ``task_arithmetic`` with every model
  ``weight: L``, ``normalize: false``, ``lambda: 1``.
- TIES: pactframe ``ties`` with ``keep_fraction: d``, ``disjoint: mean``,
  ``scaling: S``, ``trim_scope: tensor`` = mergekit ``ties`` with every model
  ``weight: 1``, ``density: d``, ``normalize: true`` (the disjoint mean), ``lambda: S``.
- Precision: pactframe ``compute_dtype: float32``, ``output.dtype: base`` (fp16) =
  mergekit ``dtype: float32``, ``out_dtype: float16``.

Known, documented differences: mergekit keeps exactly ``floor(d * n)`` entries
per task (argsort order breaks magnitude ties) while pactframe keeps
``ceil(d * n)`` and every entry tied with the k-th magnitude; with ``d = 0.25``
and these shapes ``d * n`` is an integer, so only exact magnitude ties at the
threshold can differ. Both elect the sign by mass (zeros -> +). Rounding of the
fp32 sum to fp16 may differ by one ulp.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from _llama import llama_shapes as testing_llama_shapes
from safetensors import safe_open
from safetensors.torch import save_file

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 10,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "hidden_act": "silu",
}


def llama_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The layout of the model ``cfg`` (a Hugging Face Llama config) describes."""
    return testing_llama_shapes(
        cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    )


def generate(root: Path, tasks: int = 3, shards: int = 2, seed: int = 0) -> list[Path]:
    """Base + ``tasks`` fine-tunes, written shard by shard (never a whole model in memory)."""
    shapes = llama_shapes(LLAMA)
    keys = list(shapes)
    folders = [root / "base"] + [root / f"ft{t}" for t in range(tasks)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(LLAMA, indent=2))
    weight_map = {}
    for s in range(shards):
        part_keys = keys[s::shards]
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        weight_map.update(dict.fromkeys(part_keys, name))
        g = torch.Generator().manual_seed(seed * 100 + s)
        base = {}
        for k in part_keys:
            shape = shapes[k]
            if len(shape) == 1:
                base[k] = (1 + 0.05 * torch.randn(shape, generator=g)).half()
            else:
                base[k] = (0.02 * torch.randn(shape, generator=g)).half()
        save_file(base, str(folders[0] / name), metadata={"format": "pt"})
        for t in range(tasks):
            ft = {
                k: (b.float() + 0.002 * torch.randn(b.shape, generator=g)).half()
                for k, b in base.items()
            }
            save_file(ft, str(folders[t + 1] / name), metadata={"format": "pt"})
            del ft
        del base
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    for folder in folders:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folders


def run_child(cmd: list[str]) -> dict:
    """Wall time and peak RSS of a child process (``os.wait4``); output goes to temp files
    so a chatty child can never block on a full pipe."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read().decode()[-4000:]}"
            )
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024}


def read_all(folder: Path):
    """Yield (key, tensor) of every safetensors file in ``folder`` (one file at a time)."""
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                yield k, h.get_tensor(k)


def compare(a: Path, b: Path) -> dict:
    """Max |a - b|, the share of elements that are not bit-identical, and key sets."""
    bt = dict(read_all(b))
    keys_a, max_diff, differing, total = set(), 0.0, 0, 0
    for k, ta in read_all(a):
        keys_a.add(k)
        if k not in bt:
            continue
        tb = bt[k]
        diff = (ta.float() - tb.float()).abs()
        max_diff = max(max_diff, float(diff.max()))
        differing += int((ta != tb).sum())
        total += ta.numel()
    return {
        "same_keys": keys_a == set(bt),
        "max_abs_diff": max_diff,
        "differing_fraction": differing / max(total, 1),
        "elements": total,
    }


def configs(root: Path, folders: list[Path], method: str, scaling: float, density: float):
    base, fts = folders[0], folders[1:]
    models = [{"name": f.name, "path": str(f)} for f in fts]
    if method == "task_arithmetic":
        ours = {"merger": {"name": "task_arithmetic", "scaling": scaling}}
        theirs = {
            "merge_method": "task_arithmetic",
            "models": [{"model": str(f), "parameters": {"weight": scaling}} for f in fts],
            "parameters": {"normalize": False, "lambda": 1.0},
        }
    else:
        ours = {
            "merger": {
                "name": "ties",
                "keep_fraction": density,
                "disjoint": "mean",
                "scaling": scaling,
                "trim_scope": "tensor",
            }
        }
        theirs = {
            "merge_method": "ties",
            "models": [
                {"model": str(f), "parameters": {"weight": 1.0, "density": density}} for f in fts
            ],
            "parameters": {"normalize": True, "lambda": scaling},
        }
    ours.update(
        {
            "base": str(base),
            "models": models,
            "compute_dtype": "float32",
            "device": "cpu",
            "output": {"dtype": "base", "shard_size": "2GB"},
            "seed": 0,
        }
    )
    theirs.update({"base_model": str(base), "dtype": "float32", "out_dtype": "float16"})
    p_ours, p_theirs = root / f"pactframe-{method}.yaml", root / f"mergekit-{method}.yaml"
    p_ours.write_text(yaml.safe_dump(ours, sort_keys=False))
    p_theirs.write_text(yaml.safe_dump(theirs, sort_keys=False))
    return p_ours, p_theirs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--mergekit",
        default="/tmp/mkvenv/bin/mergekit-yaml",
        help="path of mergekit-yaml in its own virtualenv (see the module docstring)",
    )
    ap.add_argument("--workdir", default="/tmp/pactframe-vs-mergekit")
    ap.add_argument("--methods", nargs="+", default=["task_arithmetic", "ties"])
    ap.add_argument("--repeats", type=int, default=1, help="runs per tool; the fastest is kept")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the checkpoints already generated in --workdir (by a run with --keep) "
        "instead of generating them again; they are kept",
    )
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if not Path(args.mergekit).exists():
        print(
            f"mergekit-yaml not found at {args.mergekit}. Install it in a separate venv:\n"
            "  python3 -m venv --system-site-packages /tmp/mkvenv\n"
            "  /tmp/mkvenv/bin/pip install mergekit==0.1.5",
            file=sys.stderr,
        )
        return 2
    root = Path(args.workdir)
    n_params = sum(torch.Size(s).numel() for s in llama_shapes(LLAMA).values())
    folders = [root / "base"] + [root / f"ft{t}" for t in range(3)]
    if args.reuse and all((f / "model.safetensors.index.json").is_file() for f in folders):
        print(f"reusing the checkpoints in {root}")
        args.keep = True
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t0 = time.perf_counter()
        folders = generate(root)
        print(
            f"generated base + 3 fine-tunes, {n_params / 1e6:.1f}M parameters each, fp16, "
            f"2 shards, in {time.perf_counter() - t0:.1f} s"
        )
    pactframe = [sys.executable, "-m", "pactframe"]
    results = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()},
        "parameters_per_model": n_params,
        "runs": {},
    }
    settings = {"task_arithmetic": (0.3, None), "ties": (1.0, 0.25)}
    for method in args.methods:
        scaling, density = settings[method]
        ours_cfg, theirs_cfg = configs(root, folders, method, scaling, density or 0.25)
        out_ours, out_theirs = root / f"out-pactframe-{method}", root / f"out-mergekit-{method}"
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for tool, cmd in (
                (
                    "mergekit",
                    [
                        args.mergekit,
                        str(theirs_cfg),
                        str(out_theirs),
                        "--quiet",
                        "--no-copy-tokenizer",
                    ],
                ),
                (
                    "pactframe",
                    [*pactframe, "merge", str(ours_cfg), str(out_ours), "--quiet", "--force"],
                ),
            ):
                if tool == "mergekit":
                    shutil.rmtree(out_theirs, ignore_errors=True)
                r = run_child(cmd)
                if tool not in best or r["wall_s"] < best[tool]["wall_s"]:
                    best[tool] = r
        agreement = compare(out_ours, out_theirs)
        ratio = best["pactframe"]["wall_s"] / best["mergekit"]["wall_s"]
        rss_ratio = best["pactframe"]["peak_rss_bytes"] / best["mergekit"]["peak_rss_bytes"]
        results["runs"][method] = {
            **best,
            "time_ratio": ratio,
            "rss_ratio": rss_ratio,
            "agreement": agreement,
        }
        print(
            f"{method}: pactframe {best['pactframe']['wall_s']:.1f} s / "
            f"{best['pactframe']['peak_rss_bytes'] / 1e9:.2f} GB, mergekit "
            f"{best['mergekit']['wall_s']:.1f} s / "
            f"{best['mergekit']['peak_rss_bytes'] / 1e9:.2f} GB"
            f" -> time x{ratio:.2f}, RSS x{rss_ratio:.2f}; outputs: max |diff| "
            f"{agreement['max_abs_diff']:.3g}, {agreement['differing_fraction'] * 100:.4f}% of "
            f"{agreement['elements']} elements differ, same keys {agreement['same_keys']}"
        )
    results["machine"]["loadavg_after"] = os.getloadavg()
    print(
        f"load average before {results['machine']['loadavg_before']}, after "
        f"{results['machine']['loadavg_after']} ({os.cpu_count()} CPUs)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
