"""Exact PACT vs Efficient PACT (randomized SVD): time, peak memory, agreement.

Cases (each exact and efficient, each in its own subprocess so that peak memory
is that case's alone):

- ``pact``        the PACT step alone (``PACTAligner``, K = 15, k = 8);
- ``pact_iso_c``  PACT-IsoC end to end (PACT step + exact Iso-C SVD);
- ``pact_tsv_m``  PACT-TSVM end to end (PACT step + exact TSV-M, T + 2 SVDs).

Methods: "exact" uses ``decomposer: exact_svd`` for the PACT step,
"efficient" ``decomposer: randomized_svd`` with its defaults (oversampling 10,
2 power iterations), "efficient_q<N>" the same with N power iterations; the
backbones' orthogonalisation and flattening are exact (``route: exact``) in all
of them; since issue 13 the decomposer also computes TSV-M's per-task triplets
(Efficient PACT end to end, with its Gram route, is ``benchmarks/scale.py``).
Workers run with ``--threads`` intra-op threads (default 1: on a shared,
loaded 2-core machine two OpenMP threads spin against other processes and
time very erratically).

Inputs (float32, one layer, T tasks, Llama-7B shapes ``(d_out, d_in)`` =
4096 x 4096 (q/k/v/o_proj) and 11008 x 4096 (gate/up_proj) by default),
generated once per shape from seed 0 and cached as .npy files:

- base ``W_0 = U diag(sigma) V^T`` with ``U``, ``V`` Haar-random orthonormal
  (QR of a Gaussian) and a power-law spectrum ``sigma_i = i^(-1/2)``,
  ``i = 1..min(d_out, d_in)`` (slowly decaying, as pre-trained weights; the gap
  after K = 15 is only ``(16/15)^(1/2) - 1 = 3.2%``);
- task vectors ``Delta_t = 0.05 L_t diag(s) R_t^T + 1e-4 G_t / sqrt(d_in)``:
  a rank-64 part with ``L_t``, ``R_t`` Haar-random orthonormal (64 columns) and
  ``s_i = 1 / i``, plus a dense Gaussian ``G_t`` (i.i.d. N(0, 1)) noise floor,
  so they are low-rank-ish but full rank.

Reported per case: wall time of the step (``time.perf_counter``), the peak
resident memory during the step (``ru_maxrss`` after resetting the kernel's
peak mark once the inputs are loaded, Linux ``/proc/self/clear_refs``) and its
rise above the resident size at the start of the step (inputs, torch),
the 1-minute load average before and after, and, for efficient cases, the
relative Frobenius error against the exact case's output (max over tasks for
the PACT step; the merged delta end to end).

    python benchmarks/pact_speed.py                     # the full run (long on 2 cores)
    python benchmarks/pact_speed.py --quick             # 1024x1024 and 2752x1024
    python benchmarks/pact_speed.py --shapes 2048x2048 --cases pact --methods exact efficient_q4
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

# one BLAS thread for the input generation unless the caller says otherwise
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

CASES = ("pact", "pact_iso_c", "pact_tsv_m")
METHODS = ("exact", "efficient")
METHOD_HELP = "exact | efficient (randomized_svd defaults) | efficient_q<N> (N power iterations)"
DEFAULT_SHAPES = ("4096x4096", "11008x4096")
QUICK_SHAPES = ("1024x1024", "2752x1024")
TASK_RANK_OF_DELTAS = 64


def parse_shape(text: str) -> tuple[int, int]:
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


# ------------------------------------------------------------------ inputs
def haar_columns(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k), dtype=np.float32))
    return q * np.sign(np.diag(r))


def make_inputs(folder: Path, shape: tuple[int, int], num_tasks: int) -> None:
    """Write base.npy and task{t}.npy (float32) for ``shape`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "done").exists():
        return
    m, n = shape
    r = min(m, n)
    rng = np.random.default_rng(0)
    sigma = np.arange(1, r + 1, dtype=np.float32) ** -0.5
    u, v = haar_columns(rng, m, r), haar_columns(rng, n, r)
    np.save(folder / "base.npy", (u * sigma) @ v.T)
    del u, v
    s = 1.0 / np.arange(1, TASK_RANK_OF_DELTAS + 1, dtype=np.float32)
    for t in range(num_tasks):
        left = haar_columns(rng, m, TASK_RANK_OF_DELTAS)
        right = haar_columns(rng, n, TASK_RANK_OF_DELTAS)
        noise = rng.standard_normal((m, n), dtype=np.float32) * np.float32(1e-4 / np.sqrt(n))
        np.save(folder / f"task{t}.npy", 0.05 * (left * s) @ right.T + noise)
    (folder / "done").write_text("ok")


# ------------------------------------------------------------------ one case (subprocess)
def build_decomposer(method: str):
    from pactframe_plugins.decomposers.exact_svd import ExactSVD
    from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD

    prefix = "efficient_q"
    if method == "exact":
        return ExactSVD()
    if method == "efficient":
        return RandomizedSVD()
    if method.startswith(prefix) and method[len(prefix) :].isdigit():
        return RandomizedSVD(power_iterations=int(method[len(prefix) :]))
    raise SystemExit(f"Unknown method {method!r}; use {METHOD_HELP}.")


def build_component(case: str, method: str):
    from pactframe_plugins.mergers.pact_presets import PACTTSVM, PACTIsoC
    from pactframe_plugins.preprocessors.pact import PACTAligner

    if case == "pact":
        return PACTAligner(decomposer=build_decomposer(method))
    cls = {"pact_iso_c": PACTIsoC, "pact_tsv_m": PACTTSVM}[case]
    # the preset's decomposer also reaches the backbone (issue 13); route "exact"
    # keeps the backbone's orthogonalisation / flattening exact as this benchmark's
    # tables (docs/pact.md) were measured; benchmarks/scale.py measures end to end
    return cls(decomposer=build_decomposer(method), route="exact")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5), so that ``ru_maxrss``
    afterwards is the peak of the step alone and not of loading the inputs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def current_rss_kib() -> int:
    """Resident set size now (``VmRSS``), in KiB; the peak mark if it is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from pactframe import LayerBundle

    folder = Path(args.inputs)
    num_tasks = args.tasks
    base = torch.from_numpy(np.load(folder / "base.npy"))
    tasks = [torch.from_numpy(np.load(folder / f"task{t}.npy")) for t in range(num_tasks)]
    bundle = LayerBundle(
        "model.layers.0.mlp.up_proj.weight",
        base,
        tasks,
        [f"task{t}" for t in range(num_tasks)],
        seed=1234,
    )
    component = build_component(args.case, args.method)
    peak_was_reset = reset_peak_rss()
    baseline_kib = current_rss_kib()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    if args.case == "pact":
        outputs = list(component.preprocess(bundle).task_vectors)
    else:
        outputs = [component.merge(bundle).delta]
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out_dir = Path(args.outputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, tensor in enumerate(outputs):
        np.save(out_dir / f"out{i}.npy", tensor.numpy())
    result = {
        "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024,
        "peak_above_inputs_mib": (peak_kib - baseline_kib) / 1024,
        "peak_measured_from_step_start": peak_was_reset,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


# ------------------------------------------------------------------ driver
def relative_error(fast_dir: Path, exact_dir: Path) -> float:
    worst = 0.0
    for path in sorted(exact_dir.glob("out*.npy")):
        exact = np.load(path).astype(np.float64)
        fast = np.load(fast_dir / path.name).astype(np.float64)
        worst = max(worst, float(np.linalg.norm(fast - exact) / np.linalg.norm(exact)))
    return worst


def run_case(
    script: Path, inputs: Path, outputs: Path, case: str, method: str, args: argparse.Namespace
) -> dict:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    command = [
        sys.executable,
        str(script),
        "--worker",
        "--inputs",
        str(inputs),
        "--outputs",
        str(outputs),
        "--case",
        case,
        "--method",
        method,
        "--tasks",
        str(args.tasks),
        "--threads",
        threads,
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=None, help="d_out x d_in, e.g. 4096x4096")
    parser.add_argument("--quick", action="store_true", help=f"shapes {' '.join(QUICK_SHAPES)}")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=METHOD_HELP)
    parser.add_argument("--tasks", type=int, default=4, help="number of tasks T (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    parser.add_argument("--workdir", default=None, help="cache for inputs and outputs")
    parser.add_argument("--json", default=None, help="append each result to this JSON file")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--outputs", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0

    shapes = args.shapes or list(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "pactframe_pact_speed")
    script = Path(__file__).resolve()
    header = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "load_at_start": os.getloadavg(),
        "tasks": args.tasks,
        "threads_per_case": args.threads,
        "command": "python benchmarks/pact_speed.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(header))
    results = []
    print(f"{'shape':>12} {'case':>11} {'method':>13} {'seconds':>9} {'speedup':>8} "
          f"{'peak MiB':>9} {'+inputs':>8} {'rel.err':>9} {'load':>10}")
    for text in shapes:
        shape = parse_shape(text)
        inputs = workdir / f"inputs_{text}_T{args.tasks}"
        make_inputs(inputs, shape, args.tasks)
        for case in args.cases:
            timings: dict[str, float] = {}
            for method in args.methods:
                outputs = workdir / f"out_{text}_{case}_{method}"
                r = run_case(script, inputs, outputs, case, method, args)
                timings[method] = r["seconds"]
                r.update(shape=text, case=case, method=method)
                if method != "exact" and "exact" in timings:
                    r["speedup"] = timings["exact"] / r["seconds"]
                    r["relative_error"] = relative_error(
                        outputs, workdir / f"out_{text}_{case}_exact"
                    )
                results.append(r)
                nan = float("nan")
                print(
                    f"{text:>12} {case:>11} {method:>13} {r['seconds']:9.2f} "
                    f"{r.get('speedup', nan):8.1f} {r['peak_rss_mib']:9.0f} "
                    f"{r['peak_above_inputs_mib']:8.0f} {r.get('relative_error', nan):9.2e} "
                    f"{r['load_before']:4.1f}/{r['load_after']:4.1f}",
                    flush=True,
                )
                if args.json:
                    Path(args.json).write_text(json.dumps({**header, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
