"""Tables and plots of comparison results (one results file per fine-tuning seed)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(
    results: Sequence[Mapping[str, Any]], order: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows (zero-shot, individual, then every method present in every seed), each with
    mean and standard deviation over seeds of test accuracy, normalized accuracy and
    merge wall time, and the hyperparameters chosen per seed. ``order`` lists the
    method names in table order (default: as stored)."""
    rows: list[dict[str, Any]] = []
    zs = [r["zero_shot"] for r in results]
    rows.append(
        {
            "method": "zero-shot (base + heads)",
            "accuracy": _mean_std([z["mean_accuracy"] for z in zs]),
            "normalized": _mean_std([_normalized(z, r["individual"]) for z, r in zip(zs, results)]),
            "seconds": None,
            "chosen": [],
        }
    )
    rows.append(
        {
            "method": "individual (fine-tuned)",
            "accuracy": _mean_std([statistics.fmean(r["individual"].values()) for r in results]),
            "normalized": (1.0, 0.0),
            "seconds": None,
            "chosen": [],
        }
    )
    names = [n for n in (order or results[0]["rows"]) if all(n in r["rows"] for r in results)]
    for name in names:
        per_seed = [r["rows"][name] for r in results]
        rows.append(
            {
                "method": name,
                "accuracy": _mean_std([p["test"]["mean_accuracy"] for p in per_seed]),
                "normalized": _mean_std([p["test"]["mean_normalized_accuracy"] for p in per_seed]),
                "seconds": _mean_std([p["merge_seconds"] for p in per_seed]),
                "chosen": [p["chosen"] for p in per_seed],
            }
        )
    return rows


def _normalized(result: Mapping[str, Any], individual: Mapping[str, float]) -> float:
    return statistics.fmean(v["accuracy"] / individual[t] for t, v in result["tasks"].items())


def _fmt(ms: tuple[float, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    if ms is None:
        return "-"
    mean, std = ms
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def _chosen(chosen: Sequence[Mapping[str, Any]]) -> str:
    def one(c: Mapping[str, Any]) -> str:
        return (
            ", ".join(
                f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in c.items()
            )
            or "defaults"
        )

    return "; ".join(one(c) for c in chosen)


def markdown_table(rows: Sequence[Mapping[str, Any]], seeds: int) -> str:
    """Accuracy and normalized accuracy in percent (mean ± std over ``seeds``)."""
    head = (
        "| method | test accuracy (%) | normalized accuracy (%) | merge wall time (s) | "
        "chosen on validation (per seed) |\n|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['method']} | {_fmt(r['accuracy'])} | {_fmt(r['normalized'])} | "
        f"{_fmt(r['seconds'], 1.0, 2)} | {_chosen(r['chosen'])} |"
        for r in rows
    ]
    return head + "\n".join(lines) + f"\n\n(mean ± standard deviation over {seeds} seed(s))\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """Horizontal bars of mean test accuracy with standard-deviation error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows][::-1]
    means = [100 * r["accuracy"][0] for r in rows][::-1]
    stds = [100 * r["accuracy"][1] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    colors = [
        "#999999"
        if n.startswith(("zero-shot", "individual"))
        else "#d62728"
        if "pact" in n or "pave" in n
        else "#1f77b4"
        for n in names
    ]
    ax.barh(names, means, xerr=stds, color=colors)
    low = min(means) - 5
    ax.set_xlim(max(0, low), min(100, max(means) + 5))
    ax.set_xlabel("mean test accuracy over tasks (%)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
