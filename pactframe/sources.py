"""Where a merge reads tensors from: checkpoints on disk or in-memory state dicts.

A *tensor source* answers ``keys()``, ``info(key)`` (shape and dtype, from a
header, without reading data) and ``load(key)`` (one CPU tensor). A *covariance
source* answers ``entries()`` (key -> shape, layout, token count) and
``load(key)``. :class:`Sources` groups the base, the T fine-tuned models and
their optional covariances for one merge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import torch

from pactframe.checkpoint import CODE_FROM_DTYPE, CheckpointReader, TensorInfo
from pactframe.covariance_io import CovarianceEntry, load_covariance, read_covariance_header
from pactframe.errors import CheckpointError, InputError


class TensorSource(Protocol):
    label: str

    def keys(self) -> list[str]: ...

    def info(self, key: str) -> TensorInfo: ...

    def load(self, key: str) -> torch.Tensor: ...


class CovarianceSource(Protocol):
    label: str

    def entries(self) -> dict[str, CovarianceEntry]: ...

    def load(self, key: str) -> torch.Tensor: ...


class FileTensorSource:
    """A checkpoint on disk (see :class:`~pactframe.checkpoint.CheckpointReader`)."""

    #: every load() returns a fresh buffer, which the pipeline may overwrite
    fresh = True

    def __init__(self, path: Path, role: str) -> None:
        self.reader = CheckpointReader(path, role=role)
        self.label = str(path)

    def keys(self) -> list[str]:
        return self.reader.keys()

    def info(self, key: str) -> TensorInfo:
        return self.reader.info(key)

    def load(self, key: str) -> torch.Tensor:
        return self.reader.load(key)


class StateDictSource:
    """An in-memory state dict (or an ``nn.Module``'s), read without copying."""

    #: load() returns the caller's own tensors: never modified
    fresh = False

    def __init__(self, state: Mapping[str, torch.Tensor] | torch.nn.Module, label: str) -> None:
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        if not isinstance(state, Mapping):
            raise InputError(
                f"{label}: expected a state dict (mapping name -> tensor) or an nn.Module; "
                f"got {type(state).__name__}."
            )
        self.state = dict(state)
        self.label = label
        for key, value in self.state.items():
            if not isinstance(value, torch.Tensor):
                raise InputError(
                    f"{label}: entry {key!r} is a {type(value).__name__}, not a tensor."
                )
            if value.dtype not in CODE_FROM_DTYPE:
                raise InputError(f"{label}: tensor {key!r} has unsupported dtype {value.dtype}.")

    def keys(self) -> list[str]:
        return list(self.state)

    def info(self, key: str) -> TensorInfo:
        t = self.state[key]
        return TensorInfo(
            key,
            Path(self.label),
            CODE_FROM_DTYPE[t.dtype],
            tuple(t.shape),
            0,
            t.numel() * t.element_size(),
        )

    def load(self, key: str) -> torch.Tensor:
        return self.state[key].detach().to("cpu")


class FileCovarianceSource:
    """A version-1 covariance file (:mod:`pactframe.covariance_io`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)
        self._entries = read_covariance_header(path)

    def entries(self) -> dict[str, CovarianceEntry]:
        return self._entries

    def load(self, key: str) -> torch.Tensor:
        return load_covariance(self.path, key)


class DictCovarianceSource:
    """In-memory covariances ``{key: (d_in, d_in) tensor}``, all in the ``linear`` layout
    unless ``layouts`` says ``conv1d``."""

    def __init__(
        self, covs: Mapping[str, torch.Tensor], label: str, layouts: Mapping[str, str] | None = None
    ) -> None:
        self.covs = dict(covs)
        self.label = label
        layouts = layouts or {}
        self._entries = {}
        for key, c in self.covs.items():
            if c.ndim != 2 or c.shape[0] != c.shape[1]:
                raise InputError(
                    f"{label}: covariance {key!r} must be square; got {tuple(c.shape)}."
                )
            self._entries[key] = CovarianceEntry(
                (int(c.shape[0]), int(c.shape[1])), layouts.get(key, "linear"), 1
            )

    def entries(self) -> dict[str, CovarianceEntry]:
        return self._entries

    def load(self, key: str) -> torch.Tensor:
        return self.covs[key].detach().to("cpu")


def _open_model(m: Any, base: Any) -> Any:
    """A fine-tuned checkpoint, or a LoRA adapter folder (``type: lora``, or ``auto`` and
    the folder has ``adapter_config.json``) read on top of ``base`` (docs/lora.md)."""
    from pactframe.lora import LoraAdapterSource, is_adapter_dir

    role = f"model {m.name!r}"
    kind = getattr(m, "type", "auto")
    if kind == "lora" or (kind == "auto" and is_adapter_dir(m.path)):
        if base is None:
            raise CheckpointError(f"{role}: a LoRA adapter needs a readable base model.")
        return LoraAdapterSource(m.path, base, role)
    return FileTensorSource(m.path, role)


@attrs.frozen(eq=False)
class Sources:
    """The base, the T fine-tuned models (in task order) and their covariances."""

    base: Any
    models: tuple[Any, ...]
    covariances: tuple[Any | None, ...]

    @classmethod
    def open(cls, base: Path, models: Sequence[Any]) -> tuple[Sources | None, list[str]]:
        """Open every file named by a spec; ``(None, problems)`` if any cannot be read."""
        problems = []
        opened_base = None
        try:
            opened_base = FileTensorSource(base, "base model")
        except CheckpointError as exc:
            problems.append(str(exc))
        opened, covs = [], []
        for m in models:
            try:
                opened.append(_open_model(m, opened_base))
            except CheckpointError as exc:
                problems.append(str(exc))
            cov = None
            if m.covariance is not None:
                try:
                    cov = FileCovarianceSource(m.covariance)
                except CheckpointError as exc:
                    problems.append(f"model {m.name!r}: {exc}")
            covs.append(cov)
        if problems:
            return None, problems
        return cls(opened_base, tuple(opened), tuple(covs)), []
