"""Shared helpers of the pipeline/CLI integration tests: tiny test-only components
(registered through a plugin manager, no entry points) and checkpoint writers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from safetensors.torch import save_file

from pactframe import MergedTensor, Merger, Preprocessor, Record, hookimpl, param
from pactframe.plugins import make_plugin_manager
from pactframe.registry import Registry
from pactframe.validation import real


@attrs.frozen
class SumMerger(Merger):
    """Test-only task arithmetic: delta = scaling * sum_t Delta_t (sum convention)."""

    name: ClassVar[str] = "t_sum"
    scaling: float = param(1.0, validator=real(0.0))

    def supports(self, bundle):
        return None if bundle.base.ndim == 2 else "only 2-D tensors"

    def merge(self, bundle, state=None):
        return MergedTensor(
            self.scaling * torch.stack(bundle.task_vectors).sum(0),
            records=(Record("t_sum", {"tasks": len(bundle.task_vectors)}),),
        )


@attrs.frozen
class MeanMerger(Merger):
    """Test-only averaging fallback: delta = mean_t Delta_t."""

    name: ClassVar[str] = "t_mean"

    def merge(self, bundle, state=None):
        return MergedTensor(torch.stack(bundle.task_vectors).mean(0))


@attrs.frozen
class NoiseMerger(Merger):
    """Test-only randomized merger: mean + 0.01 * N(0,1) drawn from the tensor seed."""

    name: ClassVar[str] = "t_noise"

    def merge(self, bundle, state=None):
        g = torch.Generator().manual_seed(bundle.seed)
        noise = torch.randn(bundle.base.shape, generator=g, dtype=torch.float64)
        mean = torch.stack(bundle.task_vectors).mean(0)
        return MergedTensor(mean + 0.01 * noise.to(mean.device, mean.dtype))


@attrs.frozen
class MaskMerger(Merger):
    """Test-only task-conditioned merger (EMR-like): delta = max-abs elected tensor,
    mask_t = sign agreement, scale_t = 1 + t/10."""

    name: ClassVar[str] = "t_mask"

    def merge(self, bundle, state=None):
        tv = torch.stack(bundle.task_vectors)
        sign = torch.where(tv.sum(0) >= 0, 1.0, -1.0).to(tv.dtype)
        delta = sign * (tv * sign).clamp(min=0).amax(0)
        masks = tuple((t * sign) > 0 for t in bundle.task_vectors)
        scales = tuple(1.0 + i / 10 for i in range(len(masks)))
        return MergedTensor(delta, bundle.task_names, masks, scales)


@attrs.frozen
class ScalePre(Preprocessor):
    """Test-only preprocessor: multiplies every task vector by ``factor``."""

    name: ClassVar[str] = "t_scale"
    factor: float = param(2.0, validator=real())

    def preprocess(self, bundle, state=None):
        return bundle.with_task_vectors(
            [self.factor * t for t in bundle.task_vectors],
            record=Record("t_scale", {"factor": self.factor}),
        )


@attrs.frozen
class GlobalNormPre(Preprocessor):
    """Test-only two-pass preprocessor: divides every task vector by the largest
    absolute entry of that task over the whole model (found in the prepass)."""

    name: ClassVar[str] = "t_globalnorm"
    needs_prepass: ClassVar[bool] = True

    def prepare(self, bundles):
        peak = None
        for b in bundles:
            m = torch.stack([t.abs().max() for t in b.task_vectors]).cpu()
            peak = m if peak is None else torch.maximum(peak, m)
        return peak

    def preprocess(self, bundle, state=None):
        return bundle.with_task_vectors(
            [t / float(state[i]) for i, t in enumerate(bundle.task_vectors)]
        )


@attrs.frozen
class FailingMerger(Merger):
    """Test-only merger that raises after ``after`` calls (interrupted merges)."""

    name: ClassVar[str] = "t_fail"
    after: int = param(3)
    calls: list = attrs.field(factory=list, eq=False, init=False)

    def merge(self, bundle, state=None):
        self.calls.append(bundle.name)
        if len(self.calls) > self.after:
            raise RuntimeError("injected failure")
        return MergedTensor(torch.stack(bundle.task_vectors).mean(0))


@attrs.frozen
class SlowMerger(Merger):
    """Test-only mean that sleeps ``seconds`` per tensor (interruption tests)."""

    name: ClassVar[str] = "t_slow"
    seconds: float = param(0.05)

    def merge(self, bundle, state=None):
        import time

        time.sleep(self.seconds)
        return MergedTensor(torch.stack(bundle.task_vectors).mean(0))


@attrs.frozen
class PeekMerger(MeanMerger):
    """Test-only mean whose supports() reads values (a contract breach: the plan asks
    supports() on shape-only meta tensors)."""

    name: ClassVar[str] = "t_peek"

    def supports(self, bundle):
        return None if float(bundle.base.abs().max()) < 1e6 else "huge weights"


class _TestPlugin:
    @hookimpl
    def pactframe_register_mergers(self):
        return [
            SumMerger,
            MeanMerger,
            NoiseMerger,
            MaskMerger,
            FailingMerger,
            SlowMerger,
            PeekMerger,
        ]

    @hookimpl
    def pactframe_register_preprocessors(self):
        return [ScalePre, GlobalNormPre]


def test_registry(with_builtins: bool = False) -> Registry:
    """Test components (+ the installed built-ins when ``with_builtins``)."""
    return Registry.from_plugin_manager(
        make_plugin_manager(load_entrypoints=with_builtins, plugins=[_TestPlugin()])
    )


test_registry.__test__ = False  # type: ignore[attr-defined]


def tiny_model(
    seed: int, dtypes: Mapping[str, torch.dtype] | None = None, layers: int = 2, width: int = 8
) -> dict[str, torch.Tensor]:
    """A small transformer-like state dict with 2-D weights, biases, norms and an int buffer."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"embed.weight": torch.randn(16, width, generator=g)}
    for i in range(layers):
        sd[f"layers.{i}.attn.q.weight"] = torch.randn(width, width, generator=g)
        sd[f"layers.{i}.mlp.up.weight"] = torch.randn(2 * width, width, generator=g)
        sd[f"layers.{i}.mlp.up.bias"] = torch.randn(2 * width, generator=g)
        sd[f"layers.{i}.norm.weight"] = 1 + 0.1 * torch.randn(width, generator=g)
    sd["lm_head.weight"] = torch.randn(16, width, generator=g)
    sd["position_ids"] = torch.arange(16, dtype=torch.int64)
    for key, dt in (dtypes or {}).items():
        sd[key] = sd[key].to(dt)
    return sd


def finetune(
    base: Mapping[str, torch.Tensor], seed: int, eps: float = 0.1
) -> dict[str, torch.Tensor]:
    """``base`` plus a seeded perturbation on every float tensor (ints copied)."""
    g = torch.Generator().manual_seed(1000 + seed)
    out = {}
    for k, v in base.items():
        if v.is_floating_point():
            out[k] = (v.double() + eps * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(
                v.dtype
            )
        else:
            out[k] = v.clone()
    return out


def save_single(sd: Mapping[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def save_sharded(
    sd: Mapping[str, torch.Tensor],
    folder: Path,
    shards: int = 3,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """An HF-style folder: ``model-0000i-of-0000n.safetensors`` + index (+ extra files)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(sd)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)
    return folder


def write_models(
    root: Path,
    *,
    tasks: int = 2,
    sharded: bool = False,
    dtypes: Mapping[str, torch.dtype] | None = None,
    **model_kw: Any,
):
    """Base + ``tasks`` fine-tunes on disk; returns (base_sd, [ft_sd...], base_path, [paths])."""
    base = tiny_model(0, dtypes, **model_kw)
    fts = [finetune(base, t + 1) for t in range(tasks)]
    if sharded:
        bp = save_sharded(
            base, root / "base", extra_files={"config.json": '{"model_type": "tiny"}'}
        )
        paths = [save_sharded(ft, root / f"ft{t}", shards=2) for t, ft in enumerate(fts)]
    else:
        bp = save_single(base, root / "base.safetensors")
        paths = [save_single(ft, root / f"ft{t}.safetensors") for t, ft in enumerate(fts)]
    return base, fts, bp, paths


def load_output(folder: Path) -> dict[str, torch.Tensor]:
    """Read a merged folder with safetensors' own reader (independent of pactframe's)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        if f.name == "task_modulators.safetensors":
            continue
        out.update(load_file(str(f)))
    return out
