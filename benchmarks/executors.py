"""One PACT-TSVM merge under the local, processes and ray executors: wall time, memory,
speed-up, and a projection of a 7B merge to 1, 8 and 64 workers.

    python benchmarks/executors.py                         # hidden 1024, 8 layers, T = 3
    python benchmarks/executors.py --hidden 512 --layers 4 --tasks 2 --out /tmp/bench-ex
    python benchmarks/executors.py --smoke                  # seconds: a tiny model (tests)

Generates Llama-shaped fp16 checkpoints (a base and T fine-tunes: embeddings,
q/k/v/o, gate/up/down, norms, lm_head; ``intermediate = 2.75 x hidden``), then
runs ``pactframe merge`` as a child process once per executor, all with one torch
thread per worker so that every run computes the same bytes (checked):

- ``local``: this process, ``threads: 1``;
- ``processes x2``: two worker processes, one thread each;
- ``ray x2``: a local Ray started by the merge (2 CPUs, 127.0.0.1), two tasks in
  flight, one thread each (Ray's start-up is part of the wall time).

The recipe is PACT with randomized SVD (``core_rank 15, task_rank 8``) then
TSV-M on the 2-D weights, ``task_arithmetic`` on embeddings and lm_head, the
mean on norms. Reported per executor: wall time of the child process and of
the merge itself (the report's ``total_s``), the driver's peak RSS and each
worker's (from the merge report), speed-up over ``local``, and whether the
shards are byte-identical to the local run.

The projection uses the local run's per-tensor seconds by tensor kind, scales
each by the cost of its SVDs (``m n min(m, n)``: TSV-M takes full SVDs) to the
7B shapes (hidden 4096, intermediate 11008, 32 layers, vocab 32000), and divides
the sum over workers (never below the slowest single tensor); reading, writing
and start-up are not in it. It is a projection, not a measurement.

Targets on the 2-core machine of docs/executors.md: ``processes x2`` at least
1.6x faster than ``local``; ``ray x2`` within 15% of ``processes x2``. The header
records the load average: other processes on a shared machine slow the
parallel runs most.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from _llama import llama_shapes as testing_llama_shapes
from safetensors.torch import save_file

EXECUTORS = {
    "local": {"name": "local", "threads": 1},
    "processes x2": {"name": "processes", "workers": 2, "threads": 1},
    "ray x2": {"name": "ray", "workers": 2, "threads": 1},
}
KINDS = {  # tensor kind -> (shape function of (hidden, intermediate, vocab), count per layer)
    "attn (h x h)": (lambda h, f, v: (h, h), 4),
    "mlp up/gate (f x h)": (lambda h, f, v: (f, h), 2),
    "mlp down (h x f)": (lambda h, f, v: (h, f), 1),
}
SEVEN_B = {"hidden": 4096, "intermediate": 11008, "layers": 32, "vocab": 32000}


def llama_shapes(hidden: int, layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """The generated model's layout (intermediate ``2.75 x hidden``)."""
    return testing_llama_shapes(hidden, int(round(2.75 * hidden)), layers, vocab)


def generate(root: Path, hidden: int, layers: int, vocab: int, tasks: int) -> int:
    """Base + ``tasks`` fine-tunes (fp16, one file each, written one model at a time);
    returns the parameter count."""
    shapes = llama_shapes(hidden, layers, vocab)
    g = torch.Generator().manual_seed(0)
    base = {}
    for k, shape in shapes.items():
        if len(shape) == 1:
            base[k] = (1 + 0.05 * torch.randn(shape, generator=g)).half()
        else:
            base[k] = (0.02 * torch.randn(shape, generator=g)).half()
    (root / "base").mkdir(parents=True, exist_ok=True)
    save_file(base, str(root / "base" / "model.safetensors"))
    for t in range(tasks):
        gt = torch.Generator().manual_seed(1000 + t)
        ft = {}
        for k, b in base.items():
            noise = 0.002 * torch.randn(b.shape, generator=gt)
            if b.ndim == 2:  # a low-rank task direction on top of the noise
                u = torch.randn(b.shape[0], 4, generator=gt)
                v = torch.randn(4, b.shape[1], generator=gt)
                noise += 0.01 * (u @ v) / (b.shape[0] * b.shape[1]) ** 0.25
            ft[k] = (b.float() + noise).half()
        (root / f"ft{t}").mkdir(parents=True, exist_ok=True)
        save_file(ft, str(root / f"ft{t}" / "model.safetensors"))
        del ft
    return sum(v.numel() for v in base.values())


def config_text(tasks: int, executor: dict) -> str:
    models = "\n".join(f"  - {{name: task{t}, path: ./ft{t}}}" for t in range(tasks))
    return (
        f"base: ./base\nmodels:\n{models}\n"
        "preprocessors: [{name: pact, decomposer: randomized_svd, core_rank: 15, task_rank: 8}]\n"
        "merger: tsv_m\n"
        "rules:\n"
        '  - {match: "embed_tokens|lm_head", merger: {name: task_arithmetic, scaling: 0.3},'
        " preprocessors: []}\n"
        "fallback: average\n"
        "seed: 0\n"
        f"executor: {json.dumps(executor)}\n"
    )


def run_merge(root: Path, label: str, executor: dict, tasks: int) -> dict:
    slug = label.replace(" ", "-")
    cfg = root / f"{slug}.yaml"
    cfg.write_text(config_text(tasks, executor))
    out = root / f"out-{slug}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pactframe", "merge", str(cfg), str(out), "--force", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: {' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    report = json.loads((out / "merge_report.json").read_text())
    digest = hashlib.sha256()
    for f in sorted(out.glob("*.safetensors")):
        digest.update(f.read_bytes())
    workers = report["executor"]["workers"]
    return {
        "label": label,
        "wall_s": wall,
        "merge_s": report["timings"]["total_s"],
        "driver_peak_rss_bytes": report["memory"]["peak_rss_bytes"],
        "worker_peak_rss_bytes": {k: w["peak_rss_bytes"] for k, w in workers.items()},
        "tensors_per_worker": {k: w["tensors"] for k, w in workers.items()},
        "sha256": digest.hexdigest(),
        "tensors": report["tensors"],
    }


def kind_of(name: str, shape: list[int]) -> str | None:
    if len(shape) != 2 or "embed" in name or "lm_head" in name:
        return None
    if "self_attn" in name:
        return "attn (h x h)"
    return "mlp down (h x f)" if "down_proj" in name else "mlp up/gate (f x h)"


def svd_cost(shape: tuple[int, int]) -> float:
    m, n = shape
    return float(m) * n * min(m, n)


def projection(local: dict, hidden: int, vocab: int) -> dict:
    """Per-tensor seconds by kind (local run) -> a 7B merge on 1, 8 and 64 workers."""
    f_small = int(round(2.75 * hidden))
    per_kind: dict[str, list[float]] = {}
    other = 0.0
    for e in local["tensors"]:
        kind = kind_of(e["name"], e["shape"])
        if kind is None:
            other = max(other, e.get("seconds", 0.0))
            continue
        per_kind.setdefault(kind, []).append(e["seconds"])
    h7, f7, v7, layers7 = (SEVEN_B[k] for k in ("hidden", "intermediate", "vocab", "layers"))
    tensors: list[float] = []
    rows = {}
    for kind, (shape_fn, count) in KINDS.items():
        measured = sum(per_kind[kind]) / len(per_kind[kind])
        scale = svd_cost(shape_fn(h7, f7, v7)) / svd_cost(shape_fn(hidden, f_small, vocab))
        projected = measured * scale
        rows[kind] = {"measured_s": measured, "scale": scale, "projected_s": projected}
        tensors += [projected] * (count * layers7)
    # embeddings / lm_head are task arithmetic: linear in size
    emb = [e["seconds"] for e in local["tensors"] if "embed" in e["name"] or "lm_head" in e["name"]]
    emb_scale = (v7 * h7) / (vocab * hidden)
    tensors += [max(emb) * emb_scale] * 2
    total = sum(tensors)
    longest = max(tensors)
    return {
        "kinds": rows,
        "tensors": len(tensors),
        "workers": {str(w): max(total / w, longest) for w in (1, 8, 64)},
        "longest_tensor_s": longest,
    }


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--executors", nargs="+", default=list(EXECUTORS), choices=list(EXECUTORS))
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temp one)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    parser.add_argument("--smoke", action="store_true", help="a tiny model (hidden 64, 2 layers)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden, args.layers, args.vocab, args.tasks = 64, 2, 256, 2
    import tempfile

    root = args.out or Path(tempfile.mkdtemp(prefix="pactframe-bench-executors-"))
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(
        f"# executors benchmark: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
        f"T = {args.tasks}\n# {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    params = generate(root, args.hidden, args.layers, args.vocab, args.tasks)
    print(f"# {params / 1e6:.1f}M parameters per checkpoint (fp16), {args.tasks} fine-tunes")
    results = []
    for label in args.executors:
        results.append(run_merge(root, label, EXECUTORS[label], args.tasks))
        r = results[-1]
        print(f"#   {label}: {r['wall_s']:.1f} s (load now {os.getloadavg()[0]:.2f})", flush=True)
    base = next((r for r in results if r["label"] == "local"), results[0])
    print("\n| executor | wall (s) | merge (s) | speed-up | driver peak RSS | worker peak RSS | "
          "same bytes |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        workers = r["worker_peak_rss_bytes"]
        worker = ", ".join(fmt_bytes(v) for v in workers.values()) if r["label"] != "local" else "-"
        print(
            f"| {r['label']} | {r['wall_s']:.1f} | {r['merge_s']:.1f} | "
            f"{base['wall_s'] / r['wall_s']:.2f}x | {fmt_bytes(r['driver_peak_rss_bytes'])} | "
            f"{worker} | {'yes' if r['sha256'] == base['sha256'] else 'NO'} |"
        )
    summary = {
        "hidden": args.hidden,
        "layers": args.layers,
        "vocab": args.vocab,
        "tasks": args.tasks,
        "parameters": params,
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "results": [{k: v for k, v in r.items() if k != "tensors"} for r in results],
    }
    if base["label"] == "local":
        proj = projection(base, args.hidden, args.vocab)
        summary["projection_7b"] = proj
        print(
            f"\nProjection (not a measurement) of a 7B PACT-TSVM merge, T = {args.tasks}, one "
            f"thread per worker, {proj['tensors']} weight tensors, from the local run's "
            "per-tensor seconds scaled by m n min(m, n):\n"
        )
        print("| tensor kind | measured s/tensor | scale | projected s/tensor |")
        print("|---|---|---|---|")
        for kind, row in proj["kinds"].items():
            print(
                f"| {kind} | {row['measured_s']:.2f} | {row['scale']:.1f} | "
                f"{row['projected_s']:.0f} |"
            )
        print("\n| workers | projected compute time |")
        print("|---|---|")
        for w, seconds in proj["workers"].items():
            print(f"| {w} | {seconds / 3600:.1f} h |")
    (root / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nresults: {root / 'results.json'}")
    if not args.keep:
        for p in root.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
    return 0 if all(r["sha256"] == base["sha256"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
