"""Subspace merges at LLM scale: wall time and peak RSS of whole merges, as ratios to TA.

Issue 13. Generated Llama-shaped fp16 checkpoints (a base and ``T`` fine-tunes) are
merged end to end through :func:`pactframe.api.merge` (read, merge tensor by tensor,
write), each method in its own subprocess so that its peak resident memory
(``ru_maxrss``) is its own. Methods (``--methods``), each "exact" and "efficient":

============  =====================================  ======================================
method        exact                                  efficient
============  =====================================  ======================================
ta            task_arithmetic (scaling 0.3)          (the same)
ties          ties (keep_fraction 0.2)               (the same)
tsv_m         tsv_m                                  tsv_m, decomposer randomized_svd
iso_c         iso_c                                  iso_c, route gram
pact_tsv_m    pact_tsv_m                             pact_tsv_m, decomposer randomized_svd
pact_iso_c    pact_iso_c                             pact_iso_c, decomposer randomized_svd
pave_ta       pave (route exact, float64) + TA       pave (default: route gram) + TA
============  =====================================  ======================================

(with ``randomized_svd`` the SVD backbones take their Gram route, ``route: auto``;
docs/mergers/index.md). Every method merges ``embed_tokens`` and ``lm_head`` with
Task Arithmetic (a rule, as one would for a real LLM), so the figures are those of
the decoder layers.

Shapes: ``--shapes 1024x8,2048x2`` (hidden x layers; intermediate = hidden *
11008 / 4096 rounded to a multiple of 64, vocabulary 8192, 16 heads' worth of
square attention projections); ``--tasks 3,8``. Weights: base ``N(0, 0.02)``;
task ``t``: ``base + 2e-3 L_t R_t^T / 4 + 2e-4 G_t`` (a rank-16 part and a dense
noise floor, full rank). PAVE gets one generated covariance per task and layer
input (``X^T X / N`` of Gaussian inputs with a decaying channel scale, ``N = 2 d_in``),
stored under each weight that reads that input (q/k/v one, gate/up one, o_proj and
down_proj their own), as collection gives them.

Per-layer extrapolation to a 7B shape (hidden 4096, intermediate 11008, 32
layers): for each method, ``t_4096 = t_2048 * (t_2048 / t_1024) ** 1`` per layer
(the growth exponent fitted between the two measured widths), times 32 layers.
It is an EXTRAPOLATION from this machine's figures, not a measurement.

    python benchmarks/scale.py                         # the full run (long on 2 cores)
    python benchmarks/scale.py --smoke                 # seconds: hidden 128 x 1 layer, T = 2
    python benchmarks/scale.py --device cuda --shapes 4096x1 --tasks 4 --methods ta pact_tsv_m
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _llama import llama_layer_shapes, llama_shapes

METHODS = ("ta", "ties", "tsv_m", "iso_c", "pact_tsv_m", "pact_iso_c", "pave_ta")
VARIANTS = ("exact", "efficient")
VOCAB = 8192
LLAMA_7B = {"hidden": 4096, "intermediate": 11008, "layers": 32}


def intermediate_size(hidden: int) -> int:
    return max(64, round(hidden * 11008 / 4096 / 64) * 64)


def layer_shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    return llama_layer_shapes(hidden, intermediate_size(hidden))


#: The layer input each linear weight reads (one covariance per group, task and layer).
INPUT_GROUP = {
    "self_attn.q_proj.weight": "attention input",
    "self_attn.k_proj.weight": "attention input",
    "self_attn.v_proj.weight": "attention input",
    "self_attn.o_proj.weight": "attention output",
    "mlp.gate_proj.weight": "mlp input",
    "mlp.up_proj.weight": "mlp input",
    "mlp.down_proj.weight": "mlp hidden",
}


def make_checkpoints(folder: Path, hidden: int, layers: int, tasks: int, vocab: int) -> None:
    """Write base.safetensors, ft{t}.safetensors and cov{t}.safetensors (cached)."""
    import torch
    from safetensors.torch import save_file

    from pactframe.covariance_io import save_covariances

    done = folder / "done.json"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    shapes = llama_shapes(hidden, intermediate_size(hidden), layers, vocab)
    base = {}
    for key, shape in shapes.items():
        if len(shape) == 1:
            base[key] = torch.ones(shape)
        else:
            base[key] = 0.02 * torch.randn(shape, generator=g)
    save_file({k: v.half() for k, v in base.items()}, str(folder / "base.safetensors"))
    for t in range(tasks):
        ft = {}
        for key, w in base.items():
            if w.ndim == 1:
                ft[key] = w + 1e-3 * torch.randn(w.shape, generator=g)
                continue
            m, n = w.shape
            left = torch.randn(m, 16, generator=g)
            right = torch.randn(n, 16, generator=g)
            low = 2e-3 * (left @ right.T) / 4 / math.sqrt(16)
            ft[key] = w + low + 2e-4 * torch.randn(w.shape, generator=g)
        save_file({k: v.half() for k, v in ft.items()}, str(folder / f"ft{t}.safetensors"))
    # One covariance per task and per layer INPUT, as collection gives them: q/k/v read
    # the same input (one matrix stored under each of their keys), gate/up another,
    # o_proj and down_proj their own; every task's differ (its own fine-tuned model
    # and data), so no damping decision can be shared across tasks.
    groups: dict[str, list[str]] = {}
    for key, group in INPUT_GROUP.items():
        groups.setdefault(group, []).append(key)
    layer = layer_shapes(hidden)
    for t in range(tasks):
        covs, layouts, samples = {}, {}, {}
        for i in range(layers):
            for keys in groups.values():
                d = layer[keys[0]][1]
                scale = torch.logspace(0, -2, d).sqrt()
                x = torch.randn(2 * d, d, generator=g) * scale
                cov = (x.T @ x) / (2 * d)
                for key in keys:
                    full = f"model.layers.{i}.{key}"
                    covs[full], layouts[full], samples[full] = cov.clone(), "linear", 2 * d
        save_covariances(
            folder / f"cov{t}.safetensors", covs, layouts, samples, source="scale.py"
        )
    done.write_text(json.dumps({"hidden": hidden, "layers": layers, "tasks": tasks}))


def method_config(method: str, variant: str, folder: Path, tasks: int, device: str) -> dict:
    efficient = variant == "efficient"
    rsvd = "randomized_svd"
    merger: Any
    preprocessors: list[Any] = []
    if method == "ta":
        merger = {"name": "task_arithmetic", "scaling": 0.3}
    elif method == "ties":
        merger = {"name": "ties", "keep_fraction": 0.2}
    elif method == "tsv_m":
        merger = {"name": "tsv_m", **({"decomposer": rsvd} if efficient else {})}
    elif method == "iso_c":
        merger = {"name": "iso_c", **({"route": "gram"} if efficient else {})}
    elif method in ("pact_tsv_m", "pact_iso_c"):
        merger = {"name": method, **({"decomposer": rsvd} if efficient else {})}
    elif method == "pave_ta":
        # exact: the SVD of W C_reg in float64 mapped back by C_reg^-1 (PAVE before
        # issue 13); efficient: the default Gram route
        exact_pave = {"name": "pave", "route": "exact", "precision": "float64"}
        preprocessors = [{"name": "pave"} if efficient else exact_pave]
        merger = {"name": "task_arithmetic", "scaling": 0.3}
    else:
        raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")
    models = []
    for t in range(tasks):
        model: dict[str, Any] = {"name": f"task{t}", "path": str(folder / f"ft{t}.safetensors")}
        if method == "pave_ta":
            model["covariance"] = str(folder / f"cov{t}.safetensors")
        models.append(model)
    return {
        "base": str(folder / "base.safetensors"),
        "models": models,
        "preprocessors": preprocessors,
        "merger": merger,
        "rules": [
            {
                "match": "embed_tokens|lm_head",
                "merger": {"name": "task_arithmetic", "scaling": 0.3},
                "preprocessors": [],
            }
        ],
        "device": device,
        "seed": 0,
    }


def run_worker(config_path: Path, out: Path) -> None:
    """Merge one config; print ``{"wall_s", "peak_rss_mib"}`` as JSON."""
    from pactframe.api import merge
    from pactframe.device import peak_rss_bytes

    data = json.loads(config_path.read_text())
    start = time.perf_counter()
    merge(data, out, force=True)
    wall = time.perf_counter() - start
    # VmHWM, this process's own peak: ru_maxrss survives exec and would report the
    # parent's (which generated the checkpoints) when that was larger
    peak = peak_rss_bytes() / 2**20
    print(json.dumps({"wall_s": wall, "peak_rss_mib": peak}))


def run_case(config: dict, work: Path, threads: int) -> dict:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        cfg = Path(tmp) / "config.json"
        cfg.write_text(json.dumps(config))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(cfg), str(Path(tmp) / "out")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"worker failed:\n{proc.stderr[-4000:]}")
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def load1() -> float:
    return os.getloadavg()[0]


def extrapolate(per_layer: dict[int, float]) -> float | None:
    """7B-shape total from per-layer times at hidden 1024 and 2048 (fitted growth)."""
    if 1024 not in per_layer or 2048 not in per_layer or per_layer[1024] <= 0:
        return None
    growth = per_layer[2048] / per_layer[1024]
    return per_layer[2048] * growth * LLAMA_7B["layers"]


def per_layer_times(rows: list[dict]) -> dict[tuple[str, str, int], dict[int, float]]:
    """``{(method, variant, T): {hidden: seconds per decoder layer}}`` of result rows."""
    out: dict[tuple[str, str, int], dict[int, float]] = {}
    for row in rows:
        key = (row["method"], row["variant"], row["tasks"])
        out.setdefault(key, {})[row["hidden"]] = row["wall_s"] / row["layers"]
    return out


def print_extrapolation(per_layer: dict[tuple[str, str, int], dict[int, float]]) -> dict:
    """Print (and return) the 7B-shape extrapolation of every case measured at both widths."""
    extrapolated = {}
    for (method, variant, tasks), times in per_layer.items():
        total = extrapolate(times)
        if total is not None:
            extrapolated[f"{method}/{variant}/T={tasks}"] = total
    if extrapolated:
        print("\n## EXTRAPOLATION (not a measurement) to hidden 4096, intermediate 11008, 32 "
              "layers: per-layer time at hidden 2048 times its growth from 1024 to 2048")
        for name, total in sorted(extrapolated.items()):
            print(f"- {name}: ~{total / 60:.1f} min")
    return extrapolated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--shapes", default="1024x8,2048x2", help="hidden x layers, comma list")
    parser.add_argument("--tasks", default="3,8", help="numbers of fine-tuned models")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        help=f"from {', '.join(METHODS)}; 'name:variant' runs one variant only (in this order)",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per worker")
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pf_scale")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--smoke", action="store_true", help="hidden 128 x 1 layer, T = 2, vocab 256 (seconds)"
    )
    parser.add_argument(
        "--extrapolate",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="only print the 7B extrapolation from the --json files of earlier runs "
        "(one at hidden 1024, one at 2048, for example)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(Path(args.worker[0]), Path(args.worker[1]))
        return 0
    if args.extrapolate:
        rows = [r for f in args.extrapolate for r in json.loads(f.read_text())["results"]]
        print_extrapolation(per_layer_times(rows))
        return 0
    if args.smoke:
        args.shapes, args.tasks, args.vocab = "128x1", "2", 256
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    task_counts = [int(t) for t in args.tasks.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"device {args.device}, {args.threads} threads per worker")
    print(f"# uptime at start: load {os.getloadavg()}")
    results: list[dict] = []
    per_layer: dict[tuple[str, str, int], dict[int, float]] = {}
    for hidden, layers in shapes:
        for tasks in task_counts:
            folder = args.work / f"h{hidden}_l{layers}_t{tasks}_v{args.vocab}_c2"
            make_checkpoints(folder, hidden, layers, tasks, args.vocab)
            print(f"\n## hidden {hidden}, {layers} layers, T = {tasks}")
            print("| method | variant | wall s | x TA | peak RSS MiB | x TA | load1 |")
            print("|---|---|---|---|---|---|---|")
            ta: dict | None = None
            cases = []
            for token in args.methods:
                method, _, only = token.partition(":")
                if method not in METHODS or only not in ("", *VARIANTS):
                    raise SystemExit(f"unknown method {token!r}; use {METHODS}[:exact|efficient]")
                variants = ["exact"] if method in ("ta", "ties") else args.variants
                cases += [(method, v) for v in ([only] if only else variants)]
            for method, variant in cases:
                cfg = method_config(method, variant, folder, tasks, args.device)
                row = run_case(cfg, args.work, args.threads)
                row.update(method=method, variant=variant, hidden=hidden, layers=layers,
                           tasks=tasks, load1=load1())
                if method == "ta":
                    ta = row
                if ta is not None:
                    row["time_x_ta"] = row["wall_s"] / ta["wall_s"]
                    row["rss_x_ta"] = row["peak_rss_mib"] / ta["peak_rss_mib"]
                results.append(row)
                per_layer.setdefault((method, variant, tasks), {})[hidden] = (
                    row["wall_s"] / layers
                )
                print(f"| {method} | {variant} | {row['wall_s']:.1f} | "
                      f"{row.get('time_x_ta', float('nan')):.1f} | "
                      f"{row['peak_rss_mib']:.0f} | {row.get('rss_x_ta', float('nan')):.2f} "
                      f"| {row['load1']:.1f} |", flush=True)
                if args.json:  # after every case, so an interrupted run keeps its rows
                    args.json.write_text(json.dumps({"results": results}, indent=1))
    extrapolated = print_extrapolation(per_layer)
    print(f"\n# uptime at end: load {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "extrapolated_s": extrapolated},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
