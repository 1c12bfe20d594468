"""Where a merge reads tensors from: checkpoints on disk or in-memory state dicts.

A *tensor source* answers ``keys()``, ``info(key)`` (shape and dtype, from a
header, without reading data) and ``load(key)`` (one CPU tensor). A *covariance
source* answers ``entries()`` (key -> shape, layout, token count) and
``load(key)``. :class:`Sources` groups the base, the T fine-tuned models and
their optional covariances for one merge.

This is the reading layer, so the value checks live here, applied to every tensor
as it is read and before any math on it:

- the ``nonfinite`` policy (a top-level config key; :data:`NONFINITE_POLICIES`):
  a float weight holding NaN or infinite values raises :class:`NonFiniteError`
  (``error``, the default), is let through with a :class:`NonFiniteWarning`
  (``warn``) or silently (``ignore``); the message names the model, the file and
  the tensor;
- covariances must be finite, symmetric and positive semi-definite within a
  tolerance (:func:`~pactframe.covariance_io.covariance_problem`), whatever the
  ``nonfinite`` policy. :meth:`Sources.open` checks every stored covariance up
  front (so ``pactframe validate`` reports them, naming file and tensor); a
  covariance not checked there is checked when it is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import torch

from pactframe.covariance_io import CovarianceEntry, CovarianceFile, covariance_problem
from pactframe.errors import CheckpointError, InputError
from pactframe.io.reader import CheckpointReader, TensorInfo, non_weight_files
from pactframe.io.units import CODE_FROM_DTYPE

# the nonfinite policy lives in its own module (pactframe.lora reads adapters with it
# and is opened from here); its names stay importable from pactframe.sources
from pactframe.nonfinite import DEFAULT_NONFINITE
from pactframe.nonfinite import NONFINITE_POLICIES as NONFINITE_POLICIES
from pactframe.nonfinite import apply_nonfinite_policy as apply_nonfinite_policy
from pactframe.nonfinite import check_policy as check_policy
from pactframe.nonfinite import nonfinite_problem as nonfinite_problem
from pactframe.safetensors_header import shown


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
    """A checkpoint on disk (see :class:`~pactframe.io.reader.CheckpointReader`)."""

    #: every load() returns a fresh buffer, which the pipeline may overwrite
    fresh = True

    def __init__(self, path: Path, role: str, *, nonfinite: str = DEFAULT_NONFINITE) -> None:
        self.reader = CheckpointReader(path, role=role)
        self.label = str(path)
        self.role = role
        self.nonfinite = check_policy(nonfinite)

    def keys(self) -> list[str]:
        return self.reader.keys()

    def info(self, key: str) -> TensorInfo:
        return self.reader.info(key)

    def load(self, key: str) -> torch.Tensor:
        tensor = self.reader.load(key)
        apply_nonfinite_policy(
            tensor,
            self.nonfinite,
            model=self.role,
            key=key,
            file=str(self.reader.info(key).file),
        )
        return tensor


class StateDictSource:
    """An in-memory state dict (or an ``nn.Module``'s), read without copying."""

    #: load() returns the caller's own tensors: never modified
    fresh = False

    def __init__(
        self,
        state: Mapping[str, torch.Tensor] | torch.nn.Module,
        label: str,
        *,
        nonfinite: str = DEFAULT_NONFINITE,
    ) -> None:
        self.nonfinite = check_policy(nonfinite)
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
        tensor = self.state[key].detach().to("cpu")
        apply_nonfinite_policy(tensor, self.nonfinite, model=self.label, key=key, file=None)
        return tensor


class _CheckedCovariances:
    """Value checks shared by the covariance sources: each key once, at :meth:`check_all`
    or at its first :meth:`load`."""

    label: str
    #: how messages name this source ("covariance file '...'")
    describe: str
    _checked: set[str]

    def _raw(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def _problem(self, key: str, matrix: torch.Tensor) -> str | None:
        problem = covariance_problem(matrix)
        self._checked.add(key)
        if problem is None:
            return None
        return (
            f"{self.describe}: entry {shown(key)}: {problem}. Re-collect the "
            "covariances (`pactframe collect-covariance`)."
        )

    def check_all(self) -> list[str]:
        """Load and check every entry; one problem per bad entry (naming file and tensor)."""
        problems = []
        for key in self.entries():  # type: ignore[attr-defined]
            problem = self._problem(key, self._raw(key))
            if problem is not None:
                problems.append(problem)
        return problems

    def load(self, key: str) -> torch.Tensor:
        matrix = self._raw(key)
        if key not in self._checked:
            problem = self._problem(key, matrix)
            if problem is not None:
                raise CheckpointError(problem[0].upper() + problem[1:])
        return matrix


class FileCovarianceSource(_CheckedCovariances):
    """A version-1 covariance file (:mod:`pactframe.covariance_io`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)
        self.describe = f"covariance file {str(path)!r}"
        self._file = CovarianceFile(path)
        self._checked = set()

    def entries(self) -> dict[str, CovarianceEntry]:
        return self._file.entries

    def _raw(self, key: str) -> torch.Tensor:
        return self._file.load(key)


class DictCovarianceSource(_CheckedCovariances):
    """In-memory covariances ``{key: (d_in, d_in) tensor}``, all in the ``linear`` layout
    unless ``layouts`` says ``conv1d``."""

    def __init__(
        self, covs: Mapping[str, torch.Tensor], label: str, layouts: Mapping[str, str] | None = None
    ) -> None:
        self.covs = dict(covs)
        self.label = label
        self.describe = label
        self._checked = set()
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

    def _raw(self, key: str) -> torch.Tensor:
        return self.covs[key].detach().to("cpu")


def _open_model(
    m: Any, base: TensorSource | None, nonfinite: str = DEFAULT_NONFINITE
) -> TensorSource:
    """A fine-tuned checkpoint, or a LoRA adapter folder (``type: lora``, or ``auto`` and
    the folder has ``adapter_config.json``) read on top of ``base`` (docs/lora.md)."""
    from pactframe.lora import LoraAdapterSource, is_adapter_dir

    role = f"model {m.name!r}"
    kind = getattr(m, "type", "auto")
    if kind == "lora" or (kind == "auto" and is_adapter_dir(m.path)):
        if base is None:
            raise CheckpointError(f"{role}: a LoRA adapter needs a readable base model.")
        return LoraAdapterSource(m.path, base, role, nonfinite=nonfinite)
    return FileTensorSource(m.path, role, nonfinite=nonfinite)


@attrs.frozen(eq=False)
class Sources:
    """The base, the T fine-tuned models (in task order) and their covariances."""

    base: TensorSource
    models: tuple[TensorSource, ...]
    covariances: tuple[CovarianceSource | None, ...]

    def with_nonfinite(self, policy: str) -> Sources:
        """Apply the ``nonfinite`` policy to every tensor source (returns ``self``)."""
        check_policy(policy)
        for source in (self.base, *self.models):
            if hasattr(source, "nonfinite"):
                source.nonfinite = policy
        return self

    @classmethod
    def open(
        cls,
        base: Path,
        models: Sequence[Any],
        *,
        nonfinite: str = DEFAULT_NONFINITE,
        copy_files: bool = True,
        check_covariances: bool = True,
    ) -> tuple[Sources | None, list[str]]:
        """Open every file named by a spec; ``(None, problems)`` if any cannot be read.

        ``nonfinite`` is the policy applied to every tensor loaded later;
        ``copy_files`` (the config's ``output.copy_files``) also checks the base
        folder's non-weight files (no symlink out of the folder); ``check_covariances``
        loads and checks every stored covariance now (finite, symmetric, PSD).
        """
        problems = []
        opened_base = None
        try:
            opened_base = FileTensorSource(base, "base model", nonfinite=nonfinite)
        except CheckpointError as exc:
            problems.append(str(exc))
        if copy_files and Path(base).is_dir():
            try:
                non_weight_files(Path(base))
            except CheckpointError as exc:
                problems.append(str(exc))
        opened, covs = [], []
        for m in models:
            try:
                opened.append(_open_model(m, opened_base, nonfinite))
            except CheckpointError as exc:
                problems.append(str(exc))
            cov = None
            if m.covariance is not None:
                try:
                    cov = FileCovarianceSource(m.covariance)
                except CheckpointError as exc:
                    problems.append(f"model {m.name!r}: {exc}")
                else:
                    if check_covariances:
                        try:
                            problems += [f"model {m.name!r}: {p}" for p in cov.check_all()]
                        except CheckpointError as exc:
                            problems.append(f"model {m.name!r}: {exc}")
            covs.append(cov)
        if problems or opened_base is None:
            return None, problems
        return cls(opened_base, tuple(opened), tuple(covs)), []
