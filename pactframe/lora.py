"""LoRA adapters (PEFT folders) as tasks, and merged deltas written back as an adapter.

A PEFT LoRA adapter folder holds ``adapter_config.json`` and
``adapter_model.safetensors``. Its task vector on the base model's weight
``W_0`` of a target module is (Hu et al., 2021, "LoRA", eq. 3)

    ``Delta = s * B A``,   ``s = lora_alpha / r``   (``lora_alpha / sqrt(r)`` with rsLoRA,
    Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor", Thm. 3.2)

with ``A`` ``(r, d_in)`` and ``B`` ``(d_out, r)``; ``rank_pattern`` and
``alpha_pattern`` override ``r`` and ``lora_alpha`` per module, and a layer
stored as ``(d_in, d_out)`` (GPT-2's ``Conv1D``, ``fan_in_fan_out: true``)
gets ``Delta^T``. ``modules_to_save`` (and trained biases) are stored whole:
their task vector is the stored tensor minus the base. Every other tensor of
the base is untouched: a zero task vector. docs/lora.md has the whole mapping.

:class:`LoraAdapterSource` is a tensor source (:mod:`pactframe.sources`) that
also answers :meth:`~LoraAdapterSource.load_factors`: the pipeline then keeps
the task vector as a :class:`~pactframe.types.LowRank` (scale folded into
``B``) instead of forming ``W_0 + Delta`` and subtracting ``W_0`` again.
:func:`write_merged_adapter` writes a merge as a PEFT adapter of rank ``R``
(``output: {format: lora, rank: R}``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pactframe.errors import CheckpointError, InputError
from pactframe.io.reader import (
    SINGLE_NAME,
    CheckpointReader,
    TensorInfo,
    read_json_in_folder,
    resolve_in_folder,
)
from pactframe.io.units import CODE_FROM_DTYPE
from pactframe.io.writer import CheckpointWriter, check_destination
from pactframe.nonfinite import DEFAULT_NONFINITE, apply_nonfinite_policy, check_policy
from pactframe.types import LowRank

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

#: PEFT method names (``peft_type``) that are not a low-rank additive delta, and what to do
_REFUSED_TYPES = {
    "IA3": "IA3 rescales activations (a multiplicative vector per layer), not an additive "
    "delta",
    "PROMPT_TUNING": "prompt tuning learns virtual tokens, not weights",
    "P_TUNING": "p-tuning learns virtual tokens, not weights",
    "PREFIX_TUNING": "prefix tuning learns per-layer key/value prefixes, not weights",
    "ADAPTION_PROMPT": "adaption prompts are extra attention tokens, not weights",
    "MULTITASK_PROMPT_TUNING": "prompt tuning learns virtual tokens, not weights",
}
_MATERIALISE_HINT = (
    "Materialise it into a full checkpoint (PEFT: model.merge_and_unload() then "
    "save_pretrained) and list that folder under models instead."
)


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding a PEFT ``adapter_config.json``."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's per-module override: the first pattern ``p`` with ``(.*\\.)?(p)$`` matching."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


_MAX_CONFIG_BYTES = 16 * 2**20


def _read_config(folder: Path, where: str) -> dict[str, Any]:
    """``adapter_config.json`` read as untrusted input (:func:`read_json_in_folder`)."""
    return read_json_in_folder(
        folder,
        CONFIG_NAME,
        what=f"The {where} folder's {CONFIG_NAME}",
        max_bytes=_MAX_CONFIG_BYTES,
        fix="A PEFT adapter config is a few kilobytes; re-save the adapter with "
        "save_pretrained.",
    )


def _strip(key: str) -> str:
    return key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key


class LoraAdapterSource:
    """A PEFT LoRA adapter folder, seen as the fine-tuned model ``base + adapter``.

    ``keys()`` and ``info()`` are the base's (an adapter changes no shape);
    ``load(key)`` is the fine-tuned tensor ``W_0 + Delta`` in the base's dtype;
    :meth:`load_factors` is the factored task vector of a LoRA target
    (``None`` elsewhere) and :meth:`untouched` says the task vector is zero.
    Every adapter tensor is checked against the base's headers when opened.
    """

    fresh = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        base: Any,
        role: str = "adapter",
        *,
        nonfinite: str = DEFAULT_NONFINITE,
    ) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self.role = role
        self.base = base
        #: the ``nonfinite`` policy (pactframe.nonfinite), applied to the adapter's own
        #: tensors when a task vector is formed (the base's source applies its own)
        self.nonfinite = check_policy(nonfinite)
        where = f"{role} ({self.path})"
        self.config: dict[str, Any] = _read_config(self.path, where)
        self._refuse_variants(where)
        if not (self.path / WEIGHTS_NAME).exists():
            hint = ""
            if (self.path / "adapter_model.bin").exists():
                hint = (
                    " It has adapter_model.bin (a pickle, which pactframe never loads): "
                    "re-save it with save_pretrained(..., safe_serialization=True)."
                )
            raise CheckpointError(f"{where}: {WEIGHTS_NAME} is missing.{hint}")
        # read as every checkpoint is: inside the folder, a regular file, the header
        # checked (pactframe.safetensors_header) before any tensor is read
        weights = resolve_in_folder(self.path, WEIGHTS_NAME, what=f"The {role} folder")
        self.weights_file = str(weights)
        reader = CheckpointReader(weights, role=role)
        self._tensors = {k: reader.load(k) for k in reader.keys()}
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out", False))
        self.rslora = bool(self.config.get("use_rslora", False))
        #: base key -> (A, B, scale, transpose, kind) of each LoRA target
        self.targets: dict[str, tuple[torch.Tensor, torch.Tensor, float, bool]] = {}
        #: base key -> stored fine-tuned tensor (modules_to_save, trained biases)
        self.full: dict[str, torch.Tensor] = {}
        #: base key -> additive dense delta (lora_bias)
        self.dense_deltas: dict[str, torch.Tensor] = {}
        self.scales: dict[str, float] = {}
        #: base keys of LoRA targets that are embeddings (lora_embedding_A / _B)
        self.embeddings: set[str] = set()
        self._map(where)

    # parsing ------------------------------------------------------------
    def _refuse_variants(self, where: str) -> None:
        cfg = self.config
        kind = str(cfg.get("peft_type", "LORA")).upper()
        if kind in _REFUSED_TYPES:
            raise CheckpointError(
                f"{where}: a {kind} adapter: {_REFUSED_TYPES[kind]}, so it has no task vector "
                "pactframe can merge. Merge LoRA adapters or full checkpoints."
            )
        if kind != "LORA":
            raise CheckpointError(
                f"{where}: peft_type {kind!r} is not a plain LoRA adapter (only 'LORA' is read "
                f"as factors). {_MATERIALISE_HINT}"
            )
        if cfg.get("use_dora"):
            raise CheckpointError(
                f"{where}: a DoRA adapter (use_dora: true): its magnitude vectors renormalise "
                f"each column of W_0 + B A, which is not a low-rank delta. {_MATERIALISE_HINT}"
            )
        for key, what in (
            ("layer_replication", "layer_replication (copies of base layers)"),
            ("trainable_token_indices", "trainable_token_indices (sparse embedding rows)"),
        ):
            if cfg.get(key):
                raise CheckpointError(f"{where}: {what} is not read. {_MATERIALISE_HINT}")

    def _map(self, where: str) -> None:
        cfg = self.config
        base_keys = set(self.base.keys())
        default_r = int(cfg.get("r", 8))
        default_alpha = float(cfg.get("lora_alpha", default_r))
        ranks = cfg.get("rank_pattern") or {}
        alphas = cfg.get("alpha_pattern") or {}
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        unknown = []
        for key, tensor in self._tensors.items():
            name = _strip(key)
            if ".lora_magnitude_vector" in name:
                raise CheckpointError(
                    f"{where}: tensor {key!r} is a DoRA magnitude vector; DoRA is not a "
                    f"low-rank delta. {_MATERIALISE_HINT}"
                )
            m = re.fullmatch(
                r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight|\.bias)?", name
            )
            if m:
                module, part, suffix = m.group(1), m.group(2), m.group(3) or ""
                if part == "lora_B" and suffix == ".bias":
                    pairs.setdefault(module, {})["bias"] = tensor
                else:
                    pairs.setdefault(module, {})[part] = tensor
            elif name in base_keys:
                self.full[name] = tensor
            else:
                unknown.append(key)
        if unknown:
            raise CheckpointError(
                f"{where}: {len(unknown)} tensor(s) of {WEIGHTS_NAME} map to no tensor of the "
                f"base ({self.base.label}): {unknown[:5]}. Check that the adapter was trained "
                "on this base model."
            )
        for module, parts in sorted(pairs.items()):
            embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
            a_key, b_key = (
                ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
            )
            if a_key not in parts or b_key not in parts:
                raise CheckpointError(
                    f"{where}: module {module!r} has only one of {a_key} / {b_key}."
                )
            A, B = parts[a_key], parts[b_key]
            if A.ndim != 2 or B.ndim != 2:
                raise CheckpointError(
                    f"{where}: module {module!r} has {A.ndim}-D LoRA factors (a convolution "
                    f"adapter); only linear and embedding layers are read as factors. "
                    f"{_MATERIALISE_HINT}"
                )
            weight = f"{module}.weight"
            if weight not in base_keys:
                raise CheckpointError(
                    f"{where}: LoRA module {module!r} has no weight {weight!r} in the base "
                    f"({self.base.label})."
                )
            r = int(A.shape[0])
            r_cfg = int(_pattern_value(ranks, module, default_r))
            alpha = float(_pattern_value(alphas, module, default_alpha))
            if r != r_cfg:
                raise CheckpointError(
                    f"{where}: module {module!r} has rank {r} factors but the config says "
                    f"r = {r_cfg} (r / rank_pattern); the adapter files disagree."
                )
            scale = alpha / math.sqrt(r) if self.rslora else alpha / r
            # linear: Delta (d_out, d_in) = B A; embedding: weight (num, dim) = (B A)^T;
            # fan_in_fan_out (Conv1D, weight (d_in, d_out)): (B A)^T
            transpose = embedding or self.fan_in_fan_out
            shape = self.base.info(weight).shape
            got = (int(B.shape[0]), int(A.shape[1]))
            got = (got[1], got[0]) if transpose else got
            if tuple(shape) != got:
                raise CheckpointError(
                    f"{where}: module {module!r}: B A gives a {list(got)} delta but the base "
                    f"weight {weight!r} is {list(shape)}"
                    + (" (fan_in_fan_out is set)" if self.fan_in_fan_out else "")
                    + ". Check fan_in_fan_out and the base model."
                )
            self.targets[weight] = (A, B, scale, transpose)
            if embedding:
                self.embeddings.add(weight)
            self.scales[weight] = scale
            if "bias" in parts:
                bias = f"{module}.bias"
                if bias not in base_keys:
                    raise CheckpointError(
                        f"{where}: module {module!r} has a lora_B bias but the base has no "
                        f"{bias!r}."
                    )
                self.dense_deltas[bias] = parts["bias"].float() * scale
        for name, tensor in self.full.items():
            shape = tuple(self.base.info(name).shape)
            if tuple(tensor.shape) != shape:
                raise CheckpointError(
                    f"{where}: saved module tensor {name!r} is {list(tensor.shape)} but the base "
                    f"has {list(shape)}."
                )

    # the tensor-source protocol -------------------------------------------
    def keys(self) -> list[str]:
        return list(self.base.keys())

    def info(self, key: str) -> TensorInfo:
        return self.base.info(key)

    def load_factors(self, key: str) -> LowRank | None:
        """``s * B A`` of a LoRA target as float32 CPU factors (``None`` for other keys)."""
        entry = self.targets.get(key)
        if entry is None:
            return None
        A, B, scale, transpose = entry
        self._check(key, A, "lora_A")
        self._check(key, B, "lora_B")
        lr = LowRank(B.float() * scale, A.float())
        return lr.transpose() if transpose else lr

    def untouched(self, key: str) -> bool:
        """True when the adapter leaves ``key`` as in the base (a zero task vector)."""
        return key not in self.targets and key not in self.full and key not in self.dense_deltas

    def delta(self, key: str) -> torch.Tensor | None:
        """The dense float32 task vector of ``key`` (``None`` when it is zero)."""
        if key in self.targets:
            return self.load_factors(key).materialize()  # type: ignore[union-attr]
        if key in self.full:
            self._check(key, self.full[key], "saved module")
            return self.full[key].float() - self.base.load(key).float()
        if key in self.dense_deltas:
            self._check(key, self.dense_deltas[key], "lora_B bias")
            return self.dense_deltas[key].clone()
        return None

    def _check(self, key: str, tensor: torch.Tensor, part: str) -> None:
        apply_nonfinite_policy(
            tensor, self.nonfinite, model=self.role, key=f"{key} ({part})", file=self.weights_file
        )

    def load(self, key: str) -> torch.Tensor:
        """The fine-tuned tensor ``W_0 + Delta`` in the base's dtype."""
        if key in self.full:
            self._check(key, self.full[key], "saved module")
            return self.full[key].clone()
        base = self.base.load(key)
        d = self.delta(key)
        if d is None:
            return base
        return (base.float() + d).to(base.dtype)

    @property
    def modules_to_save(self) -> list[str]:
        return list(self.config.get("modules_to_save") or [])


def apply_adapter(model: torch.nn.Module, adapter: str | os.PathLike[str]) -> torch.nn.Module:
    """Add a LoRA adapter's task vectors to ``model``'s weights in place (the fine-tuned
    model ``base + adapter``, e.g. to collect its covariances) and return ``model``.

    ``model`` must be the plain base model (not a ``PeftModel``): its state-dict
    names are the base's, which is what covariance files are keyed by.
    """
    params = dict(model.state_dict(keep_vars=True))
    src = LoraAdapterSource(adapter, _ModuleSource(params), "adapter")
    with torch.no_grad():
        for key in src.keys():
            d = src.delta(key)
            if d is not None:
                p = params[key]
                p.copy_((p.float() + d.to(p.device)).to(p.dtype))
    return model


class _ModuleSource:
    """The base tensors of an ``nn.Module`` as a minimal tensor source."""

    label = "the model"

    def __init__(self, params: Mapping[str, torch.Tensor]) -> None:
        self.params = params

    def keys(self) -> list[str]:
        return list(self.params)

    def info(self, key: str) -> TensorInfo:
        t = self.params[key]
        return TensorInfo(
            key, Path(self.label), CODE_FROM_DTYPE[t.dtype], tuple(t.shape), 0,
            t.numel() * t.element_size(),
        )

    def load(self, key: str) -> torch.Tensor:
        return self.params[key].detach().to("cpu")


# output: a merged adapter ---------------------------------------------------------
def adapter_sources(sources: Any) -> list[LoraAdapterSource]:
    return [m for m in sources.models if isinstance(m, LoraAdapterSource)]


def write_merged_adapter(
    pipeline: Any,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Any = None,
    on_tensor: Callable[[Any], None] | None = None,
    timings: Any = None,
    report_file: str = "merge_report.json",
    model_card: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """Run ``pipeline`` and write its merged delta as a PEFT LoRA adapter of rank ``R``.

    ``timings``: the run's :class:`~pactframe.timings.RunTimings` (started by
    ``MergePipeline.run``; a new one when ``None``); the report comes from
    ``pipeline.report``.

    The adapter's target modules are every LoRA target of the input adapters: each
    merged delta is truncated to its best rank-``R`` approximation (Eckart & Young,
    1936) and written as ``lora_B = U_R S_R``, ``lora_A = V_R^T`` with
    ``lora_alpha = r = R`` (scale 1). The inputs' ``modules_to_save`` are written
    whole. Any other tensor whose merged delta is not zero cannot be expressed in
    the adapter: the merge is refused before anything is written.
    """
    from pactframe.timings import RunTimings

    timings = RunTimings() if timings is None else timings
    out = Path(out)
    check_destination(out, force=force)
    rank = int(pipeline.spec.output.rank)
    plan = pipeline.plan()
    adapters = adapter_sources(pipeline.sources)
    if not adapters:
        raise InputError(
            "output.format: lora needs at least one LoRA adapter among models (its target "
            "modules become the merged adapter's); with only full checkpoints write a model."
        )
    fifo = {a.fan_in_fan_out for a in adapters}
    if len(fifo) > 1:
        raise InputError(
            "output.format: lora: the input adapters disagree on fan_in_fan_out; write a "
            "full model instead."
        )
    fan_in_fan_out = fifo.pop()
    targets = sorted({k for a in adapters for k in a.targets})
    saved_modules = sorted({m for a in adapters for m in a.modules_to_save})
    whole = {
        k
        for a in adapters
        for k in a.keys()
        if any(k == m or k.startswith(m + ".") for m in saved_modules)
    }
    biases = {k for a in adapters for k in a.full if k not in whole}  # bias: all / lora_only
    whole |= biases
    target_set = set(targets)
    keys: dict[str, tuple[str, str]] = {}  # target weight -> (A key, B key) in the adapter
    layout: list[tuple[str, tuple[int, ...], torch.dtype]] = []
    for t in plan.tensors:  # the adapter's tensors, known before any is computed
        if t.handler != "copy" and t.name in target_set:
            m, n = t.shape
            if _is_transposed(adapters, t.name, fan_in_fan_out):
                m, n = n, m
            r = min(rank, m, n)
            module = t.name[: -len(".weight")]
            a, b = ("lora_embedding_A", "lora_embedding_B") if any(
                t.name in x.embeddings for x in adapters
            ) else ("lora_A.weight", "lora_B.weight")
            keys[t.name] = (f"{PEFT_PREFIX}{module}.{a}", f"{PEFT_PREFIX}{module}.{b}")
            layout.append((keys[t.name][0], (r, n), t.out_dtype))
            layout.append((keys[t.name][1], (m, r), t.out_dtype))
        elif t.name in whole:
            layout.append((f"{PEFT_PREFIX}{t.name}", tuple(t.shape), t.out_dtype))
    layout.sort(key=lambda item: item[0])
    entries: list[dict[str, Any] | None] = [None] * len(plan.tensors)
    module_errors: dict[str, float] = {}
    dropped: list[str] = []
    # the checkpoint writer's atomic output (temporary sibling, signals, fsync, --force),
    # one shard renamed to PEFT's file name before the commit
    with CheckpointWriter(out, layout, shard_size=2**62, force=force) as w:
        with pipeline._start() as runner:
            # any executor: each worker returns its merged delta (float32, CPU)
            for index, result in pipeline.stream(runner, deltas=True, timings=timings):
                name = result.plan.name
                entry = result.report
                copied = result.plan.handler == "copy"
                delta = result.delta if result.merged is None else result.merged.delta
                if name in keys:
                    if delta is None:  # defensive: the written tensor minus the base
                        delta = result.tensor.double() - pipeline.sources.base.load(name).double()
                    d = delta.to("cpu", torch.float64)
                    if _is_transposed(adapters, name, fan_in_fan_out):
                        d = d.transpose(0, 1)
                    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
                    r = min(rank, int(S.shape[0]))
                    total = float(torch.linalg.vector_norm(S))
                    rest = float(torch.linalg.vector_norm(S[r:]))
                    err = rest / total if total > 0 else 0.0
                    dt = result.tensor.dtype
                    w.write(keys[name][0], Vh[:r].to(dt).contiguous())
                    w.write(keys[name][1], (U[:, :r] * S[:r]).to(dt).contiguous())
                    entry["lora"] = {"rank": r, "relative_truncation_error": err}
                    module_errors[name[: -len(".weight")]] = err
                elif name in whole:
                    w.write(f"{PEFT_PREFIX}{name}", result.tensor.contiguous())
                    entry["lora"] = {"saved_whole": True}
                elif not copied and delta is not None and bool(torch.any(delta != 0)):
                    dropped.append(name)
                entries[index] = entry
                if progress is not None:
                    progress.update(name, result.plan.read_bytes)
                if on_tensor is not None:
                    on_tensor(result)
            executor_section = pipeline.executor_report(runner)
        if progress is not None:
            progress.close()
        if dropped:
            raise InputError(
                f"output.format: lora: {len(dropped)} tensor(s) have a nonzero merged delta "
                f"but are neither a LoRA target nor in modules_to_save of an input adapter (a "
                f"full fine-tune changed them): {dropped[:5]}. Write a full model (drop "
                "output.format) or merge adapters only."
            )
        config = _output_config(adapters[0].config, rank, targets, saved_modules, fan_in_fan_out)
        config["base_model_name_or_path"] = str(pipeline.spec.base)
        if biases:
            config["bias"] = "all"
        report = pipeline.report(
            plan, entries, timings.finish(), shards=[WEIGHTS_NAME], executor=executor_section
        )
        report["lora_output"] = {
            "rank": rank,
            "target_modules": len(targets),
            "modules_to_save": saved_modules,
            "relative_truncation_error": module_errors,
            "max_relative_truncation_error": max(module_errors.values(), default=0.0),
        }
        (w.staging / SINGLE_NAME).rename(w.staging / WEIGHTS_NAME)  # the open handle follows
        w.add_file(CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        w.add_file(report_file, json.dumps(report, indent=2) + "\n")
        if model_card is not None:
            card = model_card(report).replace(
                "library_name: transformers", "library_name: peft", 1
            )  # the card's metadata: this folder is a PEFT adapter
            w.add_file("README.md", card)
        w.commit()
    return report


def _is_transposed(adapters: list[LoraAdapterSource], key: str, fan_in_fan_out: bool) -> bool:
    for a in adapters:
        if key in a.targets:
            return a.targets[key][3]
    return fan_in_fan_out


def _output_config(
    template: Mapping[str, Any],
    rank: int,
    targets: list[str],
    saved: list[str],
    fan_in_fan_out: bool,
) -> dict[str, Any]:
    """A PEFT LoraConfig dict: every field of the first input adapter's config, with the
    merged adapter's rank, scale 1 and exact target module names."""
    config = dict(template)
    config.update(
        {
            "peft_type": "LORA",
            "r": rank,
            "lora_alpha": rank,
            "use_rslora": False,
            "use_dora": False,
            "rank_pattern": {},
            "alpha_pattern": {},
            "target_modules": [t[: -len(".weight")] for t in targets],
            "modules_to_save": saved or None,
            "fan_in_fan_out": fan_in_fan_out,
            "lora_dropout": 0.0,
            "bias": "none",
            "lora_bias": False,
            "inference_mode": True,
        }
    )
    return config
