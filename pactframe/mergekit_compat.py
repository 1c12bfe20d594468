"""mergekit configs as they are: a mergekit YAML -> the equivalent pactframe config.

``pactframe merge mergekit.yml OUT`` and ``pactframe convert mergekit.yml`` both go
through :func:`convert_mergekit`. It maps the methods both tools define
(``linear``, ``task_arithmetic``, ``ties``, ``dare_ties``, ``dare_linear``,
``slerp``) and their parameters, and refuses by name anything it cannot map
exactly, saying what to do instead. The mapping table, with the reasons, is
docs/mergekit.md; the formulas are mergekit's documented ones (Goddard et al.,
"Arcee's MergeKit", 2024), implemented by pactframe's own mergers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pactframe.errors import ConfigProblems, short_repr

SUPPORTED_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp")
#: why a mergekit method has no pactframe equivalent, and what to use instead
UNSUPPORTED_METHODS = {
    "passthrough": "it stacks or copies layers (frankenmerges), which is not a merge of "
    "aligned tensors; pactframe merges models of one architecture",
    "model_stock": "not implemented; use linear or task_arithmetic",
    "breadcrumbs": "not implemented; use ties (magnitude trim) or dare_linear",
    "breadcrumbs_ties": "not implemented; use ties or dare_ties",
    "della": "not implemented; use dare_ties",
    "della_linear": "not implemented; use dare_linear",
    "nuslerp": "not implemented; use slerp (two models) or linear",
    "multislerp": "not implemented; use slerp (two models) or linear",
    "karcher": "not implemented; use linear",
    "sce": "not implemented; use ties",
    "nearswap": "not implemented",
    "arcee_fusion": "not implemented",
}
TOP_KEYS = (
    "models",
    "slices",
    "merge_method",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
)
REFUSED_TOP_KEYS = {
    "modules": "per-module merges (multimodal configs) are not supported; merge one "
    "architecture at a time",
    "tokenizer": "the tokenizer block (added token embeddings by hand) is not supported; use "
    "tokenizer_source: base or union",
    "chat_template": "chat templates are not written; copy tokenizer_config.json by hand",
}
#: parameters each method reads (global or per model)
METHOD_PARAMETERS = {
    "linear": ("weight", "normalize"),
    "task_arithmetic": ("weight", "normalize", "lambda", "int8_mask"),
    "ties": ("weight", "density", "normalize", "lambda", "int8_mask"),
    "dare_ties": ("weight", "density", "normalize", "lambda", "int8_mask", "rescale"),
    "dare_linear": ("weight", "density", "normalize", "lambda", "int8_mask", "rescale"),
    "slerp": ("t",),
}
DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64"}
DTYPES.update({"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "half": "float16"})


@attrs.frozen
class Converted:
    """The pactframe config (a mapping, paths as strings) and notes on what was mapped."""

    config: dict[str, Any]
    notes: tuple[str, ...]


def is_mergekit_config(data: Any) -> bool:
    """A mergekit config names its method with ``merge_method``."""
    return isinstance(data, Mapping) and "merge_method" in data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Converter:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.notes: list[str] = []

    def path(self, where: str, ref: Any) -> str | None:
        if not isinstance(ref, str) or not ref:
            self.problems.append(f"{where}: expected a model path; got {short_repr(ref)}.")
            return None
        if "+" in ref and not _exists(ref):
            self.problems.append(
                f"{where}: {short_repr(ref)} applies a LoRA (model+lora), which pactframe does "
                "not do; "
                "merge the adapter into the model first (peft's merge_and_unload) and give "
                "that folder."
            )
            return None
        try:
            p = Path(ref).expanduser()
            if p.is_absolute():
                found = p.exists()
            elif (self.base_dir / p).exists():
                found = True
            elif Path.cwd().joinpath(p).exists():  # mergekit resolves against the working dir
                return str(Path.cwd() / p)
            else:
                found = False
        except (OSError, ValueError, RuntimeError) as exc:  # name too long, NUL byte, ~user
            self.problems.append(f"{where}: {short_repr(ref)} is not a usable path ({exc}).")
            return None
        if not found:
            hub = re.fullmatch(r"[\w.-]+/[\w.-]+", ref) is not None
            advice = (
                f" pactframe reads local folders only: download it first (e.g. "
                f"`huggingface-cli download {ref} --local-dir DIR`) and put DIR in the config."
                if hub
                else ""
            )
            self.problems.append(f"{where}: model {short_repr(ref)} is not a local folder.{advice}")
        return ref

    def scalar(self, where: str, name: str, value: Any) -> Any:
        if isinstance(value, (list, Mapping)):
            self.problems.append(
                f"{where}: parameter {short_repr(name)} is a per-tensor list "
                f"({short_repr(value)}); pactframe maps "
                "scalar values only (slerp's t excepted). Write a pactframe config with rules "
                "(one merger per tensor-name pattern) instead."
            )
            return None
        return value


def _num_layers(folder: Path) -> int | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def _task_name(path: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "_", Path(path.rstrip("/")).name) or "model"
    name, i = stem, 2
    while name in used:
        name, i = f"{stem}_{i}", i + 1
    used.add(name)
    return name


def convert_mergekit(
    data: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "the config"
) -> Converted:
    """A mergekit config -> ``Converted``; raises ``ConfigProblems`` naming everything
    that cannot be mapped, with what to do."""
    conv = _Converter(Path(base_dir) if base_dir is not None else Path.cwd())
    problems, notes = conv.problems, conv.notes
    method = data.get("merge_method")
    if not isinstance(method, str):
        problems.append(f"merge_method must be a method name; got {short_repr(method)}.")
        method = ""
    for key in data:
        if key in REFUSED_TOP_KEYS:
            problems.append(f"mergekit key {short_repr(key)}: {REFUSED_TOP_KEYS[key]}.")
        elif key not in TOP_KEYS:
            problems.append(
                f"mergekit key {short_repr(key)} is not one pactframe maps (known: "
                f"{', '.join(TOP_KEYS)})."
            )
    if method in UNSUPPORTED_METHODS:
        problems.append(
            f"merge_method {short_repr(method)} has no pactframe equivalent: "
            f"{UNSUPPORTED_METHODS[method]}."
            f" Supported: {', '.join(SUPPORTED_METHODS)}."
        )
    elif method and method not in SUPPORTED_METHODS:
        problems.append(
            f"merge_method {short_repr(method)} is not a method pactframe maps; supported: "
            f"{', '.join(SUPPORTED_METHODS)}."
        )
    if problems:
        raise ConfigProblems(problems, source)

    method = str(method)
    entries = _entries(conv, data)
    global_params = data.get("parameters") or {}
    if not isinstance(global_params, Mapping):
        problems.append(f"parameters: expected a mapping; got {short_repr(global_params)}.")
        global_params = {}
    allowed = METHOD_PARAMETERS[method]
    for where, params in [("parameters", global_params)] + [
        (f"models[{i}].parameters", e[1]) for i, e in enumerate(entries)
    ]:
        for key in params:
            if key not in allowed:
                problems.append(
                    f"{where}: {method} has no parameter {short_repr(key)} that pactframe maps "
                    f"(mapped: {', '.join(allowed)})."
                )
    base_ref = data.get("base_model")
    base_path = conv.path("base_model", base_ref) if base_ref is not None else None

    def get(name: str, params: Mapping[str, Any], default: Any) -> Any:
        if name in params:
            return conv.scalar("models[].parameters", name, params[name])
        if name in global_params:
            return conv.scalar("parameters", name, global_params[name]) if name != "t" else None
        return default

    out: dict[str, Any] = {}
    used: set[str] = set()
    models: list[dict[str, Any]] = []
    densities = set()
    for ref, params, path in entries:
        if path is None:
            continue
        is_base = base_ref is not None and ref == base_ref
        if is_base and method != "linear":
            continue  # the base is theta_0, not a task vector (mergekit skips it too)
        entry: dict[str, Any] = {"name": _task_name(ref, used), "path": path}
        weight = get("weight", params, None)
        if weight is not None:
            if not _number(weight):
                problems.append(
                    f"model {short_repr(ref)}: weight must be a number; got "
                    f"{short_repr(weight)}."
                )
            entry["weight"] = weight
        elif method != "slerp":
            entry["weight"] = 1.0
            notes.append(
                f"model {short_repr(ref)} has no weight; mergekit requires one, 1.0 is "
                "used"
            )
        if "density" in METHOD_PARAMETERS[method]:
            densities.add(get("density", params, 1.0))
        models.append(entry)
    if method == "slerp":
        for m in models:
            m.pop("weight", None)

    if method != "linear" and base_path is None:
        problems.append(f"merge_method {method}: base_model is required (mergekit needs it too).")
    if method == "linear":
        if base_path is None:
            if models:
                base_path = models[0]["path"]
                notes.append(
                    "linear without base_model: the first model's folder is the base "
                    "(its own task vector is zero, so it still counts with its weight)"
                )
        elif base_ref not in [e[0] for e in entries]:
            notes.append(
                "linear: base_model is not among the models, so it is not averaged in "
                "(list it under models with a weight to include it)"
            )
    if base_path is not None:
        out["base"] = base_path
    out["models"] = models

    normalize_default = {"linear": True, "ties": True}.get(method, False)
    normalize = global_params.get("normalize", normalize_default)
    scaling = global_params.get("lambda", 1.0)
    if global_params.get("int8_mask") is not None:
        notes.append(
            "int8_mask ignored: it only saves memory in mergekit; pactframe's masks are boolean"
        )
    if len(densities) > 1:
        problems.append(
            f"{method}: the models have different densities "
            f"{short_repr(sorted(map(str, densities)))}; pactframe's "
            "trim and drop take one fraction for all models. Use one density."
        )
    density = next(iter(densities)) if densities else 1.0
    if not _number(density) or not 0.0 < density <= 1.0:
        problems.append(f"density must be a number in (0, 1]; got {short_repr(density)}.")
        density = 1.0
    rescale = global_params.get("rescale", True)
    if method == "linear":
        out["merger"] = {"name": "linear", "normalize": normalize}
    elif method == "task_arithmetic":
        out["merger"] = {"name": "task_arithmetic", "scaling": scaling, "normalize": normalize}
    elif method == "ties":
        out["merger"] = {
            "name": "ties",
            "keep_fraction": density,
            "scaling": scaling,
            "disjoint": "mean" if normalize else "sum",
        }
    elif method in ("dare_ties", "dare_linear"):
        out["preprocessors"] = [
            {"name": "dare", "drop_probability": round(1.0 - density, 12), "rescale": rescale}
        ]
        if method == "dare_ties":
            out["merger"] = {
                "name": "ties",
                "keep_fraction": 1.0,
                "scaling": scaling,
                "disjoint": "mean" if normalize else "sum",
            }
        else:
            out["merger"] = {"name": "task_arithmetic", "scaling": scaling, "normalize": normalize}
        notes.append(
            "DARE's random drops use pactframe's seeded generator, so the kept entries differ "
            "from mergekit's run (the same in distribution)"
        )
    elif method == "slerp":
        if len(models) != 1:
            problems.append(
                f"slerp: interpolates base_model and exactly one other model; got "
                f"{len(models)} other model(s) ({', '.join(m['path'] for m in models)})."
            )
        if "t" not in global_params:
            problems.append("slerp: parameters.t is required (mergekit requires it too).")
        t = global_params.get("t", 0.5)
        merger: dict[str, Any] = {"name": "slerp", "t": t}
        if isinstance(t, list):
            layers = _num_layers(_resolve(conv.base_dir, base_path)) if base_path else None
            if layers is None:
                problems.append(
                    "slerp: t has gradient lists, which need the number of layers; the base "
                    "folder's config.json has no num_hidden_layers. Convert, then set num_layers."
                )
            else:
                merger["num_layers"] = layers
        out["merger"] = merger
    dtype = data.get("dtype")
    out_dtype = data.get("out_dtype") or dtype
    if dtype is not None and not isinstance(dtype, str):
        problems.append(f"dtype must be a dtype name; got {short_repr(dtype)}.")
        dtype = out_dtype = None
    if out_dtype is not None and not isinstance(out_dtype, str):
        problems.append(f"out_dtype must be a dtype name; got {short_repr(out_dtype)}.")
        out_dtype = None
    if dtype is not None:
        if dtype not in DTYPES:
            problems.append(f"dtype {short_repr(dtype)} is not one of {', '.join(DTYPES)}.")
        out["input_dtype"] = "cast"
        if DTYPES.get(dtype) == "float64":
            out["compute_dtype"] = "float64"
        if DTYPES.get(dtype) in ("float16", "bfloat16"):
            notes.append(
                f"dtype {dtype}: inputs are cast to pactframe's compute dtype "
                f"({out.get('compute_dtype', 'float32')}) and rounded once to the output "
                "dtype, where mergekit computes in the given dtype"
            )
    if out_dtype is not None:
        if out_dtype in DTYPES:
            out["output"] = {"dtype": DTYPES[out_dtype]}
        elif out_dtype != dtype:  # an unknown dtype was reported above
            problems.append(f"out_dtype {short_repr(out_dtype)} is not one of {', '.join(DTYPES)}.")
    tok = data.get("tokenizer_source")
    if tok is not None:
        if tok in ("base", "union"):
            out["vocab"] = tok
        elif tok == base_ref:
            out["vocab"] = "base"
        else:
            problems.append(
                f"tokenizer_source {short_repr(tok)}: pactframe takes the tokenizer of the "
                "base (vocab: "
                "base) or keeps every model's added tokens at their ids (vocab: union); use one "
                "of those."
            )
    if problems:
        raise ConfigProblems(problems, source)
    return Converted(out, tuple(notes))


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def _entries(conv: _Converter, data: Mapping[str, Any]) -> list[tuple[str, dict, str | None]]:
    """``(model reference, its parameters, local path)`` from ``models`` or one full slice."""
    models = data.get("models")
    slices = data.get("slices")
    if (models is None) == (slices is None):
        conv.problems.append("a mergekit config needs exactly one of 'models' or 'slices'.")
        return []
    out: list[tuple[str, dict, str | None]] = []
    if models is not None:
        if not isinstance(models, list) or not models:
            conv.problems.append(f"models: expected a non-empty list; got {short_repr(models)}.")
            return []
        for i, m in enumerate(models):
            if isinstance(m, str):
                m = {"model": m}
            if not isinstance(m, Mapping) or "model" not in m:
                conv.problems.append(f"models[{i}]: expected {{model: PATH, parameters: ...}}.")
                continue
            params = m.get("parameters") or {}
            if not isinstance(params, Mapping):
                conv.problems.append(
                    f"models[{i}].parameters: expected a mapping; got {short_repr(params)}."
                )
                continue
            params = dict(params)
            out.append((m["model"], params, conv.path(f"models[{i}].model", m["model"])))
        return out
    if not isinstance(slices, list) or len(slices) != 1 or not isinstance(slices[0], Mapping):
        conv.problems.append(
            "slices: only one slice spanning every layer of every model maps to pactframe (a "
            "plain merge); layer stacking and partial ranges are not supported. Use models: "
            "instead."
        )
        return []
    sl = slices[0]
    extra = set(sl) - {"sources"}
    if extra:
        conv.problems.append(f"slices[0]: keys {sorted(extra)} are not mapped; use models:.")
    sources = sl.get("sources") or []
    if not isinstance(sources, list):
        conv.problems.append(f"slices[0].sources: expected a list; got {short_repr(sources)}.")
        sources = []
    for i, src in enumerate(sources):
        if not isinstance(src, Mapping) or "model" not in src:
            conv.problems.append(f"slices[0].sources[{i}]: expected {{model, layer_range}}.")
            continue
        path = conv.path(f"slices[0].sources[{i}].model", src["model"])
        rng = src.get("layer_range")
        layers = _num_layers(_resolve(conv.base_dir, path)) if path else None
        if not (isinstance(rng, list) and len(rng) == 2 and rng[0] == 0 and rng[1] == layers):
            conv.problems.append(
                f"slices[0].sources[{i}]: layer_range {short_repr(rng)} is not the whole model "
                f"([0, {layers}] from its config.json); pactframe merges whole models only."
            )
        src_params = src.get("parameters") or {}
        if not isinstance(src_params, Mapping):
            conv.problems.append(
                f"slices[0].sources[{i}].parameters: expected a mapping; got "
                f"{short_repr(src_params)}."
            )
            continue
        out.append((src["model"], dict(src_params), path))
    return out
