"""The merge report (``merge_report.json``) and its Markdown model card (``README.md``).

The report holds: the resolved config (every component with all parameters),
versions, seed, device, which recipe / rule / fallback handled each tensor and
why, every record the preprocessors and mergers attached (PACT's intrusion
energies, PAVE's allocations...), every tensor-level evaluator's data, timings
and peak memory. The model card summarises it for people.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pactframe.io.units import format_bytes, numel
from pactframe.timings import RunTimings

if TYPE_CHECKING:  # pragma: no cover
    from pactframe.config import MergeSpec
    from pactframe.plan import MergePlan

REPORT_VERSION = 1
CONFIG_FILE = "pactframe_config.yaml"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def build_report(
    spec: MergeSpec,
    plan: MergePlan,
    entries: Sequence[dict[str, Any]],
    *,
    device: torch.device | str,
    timings: RunTimings | Mapping[str, float],
    peak_rss: int,
    peak_device: int | None,
    modulators: str | None,
    shards: Sequence[str],
    notes: Sequence[str] = (),
    executor: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The merge report of one run, from what the run produced: the spec it ran, its
    plan, the per-tensor entries (plan order), the device, the run's timings, peak
    memory, output files, ``notes`` found while reading the inputs (vocabulary
    handling) and the executor's section (``None``: none)."""
    from pactframe import __version__

    handled = Counter(
        e["handler"] if e["handler"] != "recipe" else f"recipe ({e['route']})" for e in entries
    )
    parameters = sum(numel(e["shape"]) for e in entries)
    seconds = timings.as_dict() if isinstance(timings, RunTimings) else dict(timings)
    report = {
        "report_version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "pactframe": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "config_file": str(spec.source) if spec.source else None,
        "config": spec.to_dict(),
        "seed": spec.seed,
        "device": str(device),
        "compute_dtype": spec.compute_dtype,
        "tasks": list(spec.task_names),
        "notes": [*spec.notes, *plan.notes, *notes],
        "summary": {
            "tensors": len(entries),
            "parameters": parameters,
            "handled_by": dict(sorted(handled.items())),
            "output_bytes": plan.output_bytes,
            "read_bytes": plan.read_bytes,
            "shards": list(shards),
            "task_modulators": modulators,
        },
        "timings": {k: round(v, 4) for k, v in sorted(seconds.items())},
        "memory": {
            "peak_rss_bytes": peak_rss,
            "peak_device_bytes": peak_device,
            "estimated_working_set_bytes": plan.memory_estimate()["working_set_bytes"],
        },
        "tensors": list(entries),
    }
    if executor is not None:
        report["executor"] = dict(executor)
    return report


def _numeric_leaves(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested mappings as dotted keys (``before.sst2``)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_numeric_leaves(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix[:-1]] = float(data)
    return out


def _evaluator_means(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean over tensors of every numeric field (nested ones as dotted keys) of
    every evaluator."""
    sums: dict[str, dict[str, list[float]]] = {}
    for e in entries:
        for ev, data in e.get("evaluators", {}).items():
            for key, value in _numeric_leaves(data).items():
                sums.setdefault(ev, {}).setdefault(key, []).append(value)
    return {ev: {k: sum(v) / len(v) for k, v in d.items()} for ev, d in sums.items()}


def hub_name(path: str) -> str:
    """How a model folder is named in ``base_model``: the Hub id in its config.json's
    ``_name_or_path`` when that looks like one (``org/name``), else the path as given."""
    config = Path(path) / "config.json"
    try:
        name = json.loads(config.read_text()).get("_name_or_path", "")
    except (OSError, ValueError, AttributeError):
        name = ""
    return name if isinstance(name, str) and _HUB_ID.match(name) else path


def card_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face model-card metadata (the YAML block the Hub reads);
    ``library_name: transformers`` when the base folder has a ``config.json``."""
    cfg = report["config"]
    method = cfg["merger"]["name"]
    bases = [hub_name(cfg["base"])] + [hub_name(m["path"]) for m in cfg["models"]]
    unique = list(dict.fromkeys(bases))
    meta: dict[str, Any] = {"base_model": unique}
    if (Path(cfg["base"]) / "config.json").is_file():  # a transformers model folder
        meta["library_name"] = "transformers"
    meta["tags"] = ["merge", "pactframe", method]
    return meta


def config_yaml(report: dict[str, Any]) -> str:
    """The resolved config as YAML (``pactframe_config.yaml`` in the output folder)."""
    import yaml

    header = "# The resolved pactframe config of this merge (pactframe merge FILE OUT reruns it).\n"
    return header + yaml.safe_dump(report["config"], sort_keys=False)


def model_card(report: dict[str, Any]) -> str:
    """A Markdown summary of a merge report, with the Hub's metadata block and the recipe."""
    import yaml

    cfg = report["config"]
    s = report["summary"]
    lines = [
        "---",
        yaml.safe_dump(card_metadata(report), sort_keys=False).rstrip(),
        "---",
        "",
        "# Merged model",
        "",
        f"Merged with pactframe {report['versions']['pactframe']} on "
        f"{report['created']} (torch {report['versions']['torch']}, device "
        f"`{report['device']}`, compute dtype `{report['compute_dtype']}`, seed {report['seed']}).",
        "",
        "## Inputs",
        "",
        f"- base: `{cfg['base']}`",
    ]
    for m in cfg["models"]:
        cov = f" (covariance `{m['covariance']}`)" if m.get("covariance") else ""
        lines.append(f"- task `{m['name']}`: `{m['path']}`{cov}")
    pre = ", ".join(f"`{p['name']}`" for p in cfg["preprocessors"]) or "none"
    lines += [
        "",
        "## Recipe",
        "",
        f"- preprocessors: {pre}",
        f"- merger: `{_short(cfg['merger'])}`",
        f"- fallback: `{_short(cfg['fallback']) if cfg['fallback'] else 'none'}`",
    ]
    for r in cfg["rules"]:
        what = "fallback (excluded)" if r["exclude"] else f"`{_short(r['merger'])}`"
        lines.append(f"- rule `{r['match']}`: {what}")
    lines += [
        "",
        "## Result",
        "",
        f"- {s['tensors']} tensors, {s['parameters']:,} parameters, "
        f"{format_bytes(s['output_bytes'])} in {len(s['shards'])} shard(s)",
        "- handled by: " + ", ".join(f"{k}: {v}" for k, v in s["handled_by"].items()),
    ]
    if s["task_modulators"]:
        lines.append(
            f"- task-conditioned: per-task masks and scales in `{s['task_modulators']}`; "
            "`pactframe materialize THIS_FOLDER --task NAME DEST` writes one task's model"
        )
    t = report["timings"]
    mem = report["memory"]
    lines.append(
        f"- wall time {t.get('total_s', 0):.1f} s, peak RSS {format_bytes(mem['peak_rss_bytes'])}"
        + (
            f", peak GPU memory {format_bytes(mem['peak_device_bytes'])}"
            if mem.get("peak_device_bytes")
            else ""
        )
    )
    means = _evaluator_means(report["tensors"])
    if means:
        lines += ["", "## Diagnostics (mean over the tensors that report them)", ""]
        for ev, values in sorted(means.items()):
            lines += [f"`{ev}`:", "", "| field | mean |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" for k, v in sorted(values.items())]
            lines.append("")
    if report.get("notes"):
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in report["notes"]]
    lines += [
        "",
        "## Configuration",
        "",
        f"The resolved recipe (also in `{CONFIG_FILE}`):",
        "",
        "```yaml",
        yaml.safe_dump(cfg, sort_keys=False).rstrip(),
        "```",
    ]
    lines += ["", "Every tensor's handler, records and diagnostics are in `merge_report.json`.", ""]
    return "\n".join(lines)


def _short(component: dict[str, Any]) -> str:
    params = ", ".join(
        f"{k}={v}" for k, v in component.items() if k != "name" and not isinstance(v, dict)
    )
    return f"{component['name']}({params})"
