"""Weight diagnostics of a merge without writing a model (``pactframe diagnose``).

Runs the pipeline's main pass (preprocessors, merger, evaluators) and writes:

- ``intrusion_energy.csv``: ``tensor, core_rank, task, before, after`` from the
  ``intrusion_energy`` evaluator (added when the config does not list it);
- ``spectra.csv``: ``tensor, series, index, sigma``: the top singular values of
  every 2-D tensor's task vectors as read (``<task>/original``), after the
  preprocessors (``<task>/processed``) and of the merged delta (``merged``);
- ``intrusion_energy.png`` and ``spectra.png`` when matplotlib is importable (the
  optional ``plot`` extra: ``pip install 'pactframe[plot]'``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import attrs
import torch

from pactframe.api import load_spec
from pactframe.progress import Progress
from pactframe.registry import Registry, build_registry

INTRUSION = "intrusion_energy"


def _svdvals(matrix: torch.Tensor, top: int) -> list[float]:
    return torch.linalg.svdvals(matrix.double())[:top].cpu().tolist()


def diagnose(
    config: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    registry: Registry | None = None,
    device: str | None = None,
    top: int = 32,
    plots: bool = True,
    progress: bool = False,
) -> tuple[list[Path], str]:
    """Write the CSV files (and plots); return ``(paths written, note)``."""
    from pactframe.pipeline import MergePipeline

    spec = load_spec(config, registry=registry)
    registry = registry or build_registry()
    if INTRUSION not in {e.name for e in spec.evaluators} and ("evaluator", INTRUSION) in registry:
        spec = attrs.evolve(
            spec,
            evaluators=(*spec.evaluators, registry.create("evaluator", INTRUSION)),  # type: ignore[arg-type]
        )
    pipeline = MergePipeline(spec, device=device)
    plan = pipeline.plan()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    ie_rows: list[list[object]] = []
    sp_rows: list[list[object]] = []
    bar = Progress(len(plan.tensors), plan.read_bytes, label="diagnosing", enabled=progress)
    for result in pipeline.results(bar):
        name = result.plan.name
        data = result.report.get("evaluators", {}).get(INTRUSION)
        if isinstance(data, dict) and "before" in data:
            for task in spec.task_names:
                ie_rows.append(
                    [
                        name,
                        data.get("core_rank"),
                        task,
                        data["before"].get(task),
                        data.get("after", {}).get(task),
                    ]
                )
        if result.original is None or not result.original.is_matrix:
            continue
        for stage, bundle in (("original", result.original), ("processed", result.processed)):
            for task, tv in zip(bundle.task_names, bundle.task_vectors):  # type: ignore[union-attr]
                for i, s in enumerate(_svdvals(tv, top)):
                    sp_rows.append([name, f"{task}/{stage}", i, s])
        if result.merged is not None:
            for i, s in enumerate(_svdvals(result.merged.delta, top)):
                sp_rows.append([name, "merged", i, s])
    bar.close()
    written = [
        _write_csv(
            out / "intrusion_energy.csv",
            ["tensor", "core_rank", "task", "before", "after"],
            ie_rows,
        ),
        _write_csv(out / "spectra.csv", ["tensor", "series", "index", "sigma"], sp_rows),
    ]
    note = ""
    if plots:
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError:
            note = (
                "matplotlib is not installed, so no PNG plots were drawn (the CSV files are "
                "complete); install the plot extra: pip install 'pactframe[plot]'."
            )
        else:
            written += _plot(out, ie_rows, sp_rows, spec.task_names)
    return written, note


def _num(value: object) -> float:
    """A CSV cell as a float for plotting (``None`` -> NaN)."""
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _plot(
    out: Path, ie_rows: list[list[object]], sp_rows: list[list[object]], tasks: tuple[str, ...]
) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    if ie_rows:
        fig, ax = plt.subplots(figsize=(10, 4))
        tensors = list(dict.fromkeys(r[0] for r in ie_rows))
        for task in tasks:
            rows = [r for r in ie_rows if r[2] == task]
            xs = [tensors.index(r[0]) for r in rows]
            ax.plot(xs, [_num(r[3]) for r in rows], "o-", label=f"{task} before", alpha=0.7)
            ax.plot(xs, [_num(r[4]) for r in rows], "x--", label=f"{task} after", alpha=0.7)
        ax.set_xlabel("tensor (plan order)")
        ax.set_ylabel("intrusion energy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small", ncol=2)
        fig.tight_layout()
        fig.savefig(out / "intrusion_energy.png", dpi=100)
        plt.close(fig)
        written.append(out / "intrusion_energy.png")
    merged = [r for r in sp_rows if r[1] == "merged"]
    if merged:
        fig, ax = plt.subplots(figsize=(7, 4))
        tensors = list(dict.fromkeys(r[0] for r in merged))[:12]
        for name in tensors:
            values = [float(r[3]) for r in merged if r[0] == name]  # type: ignore[arg-type]
            if values and values[0] > 0:
                ax.semilogy([v / values[0] for v in values], label=str(name))
        ax.set_xlabel("index")
        ax.set_ylabel("sigma_i / sigma_1 of the merged delta")
        ax.legend(fontsize="x-small")
        fig.tight_layout()
        fig.savefig(out / "spectra.png", dpi=100)
        plt.close(fig)
        written.append(out / "spectra.png")
    return written
