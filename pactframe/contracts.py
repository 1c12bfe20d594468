"""The four contracts every plugin implements.

A component is a frozen attrs class: its fields are its hyperparameters,
validated at construction, and the class itself is its own configuration.
``name`` (a snake_case class attribute) is what configs and the registry use.

Components are pure: they never read files, never move tensors between
devices, and return new tensors rather than mutating their inputs. One instance
is therefore safe across tensors, threads, devices and worker processes.

Factored task vectors: a LoRA adapter's task vector is held as factors
(:class:`~pactframe.types.LowRank`, ``Delta = B @ A``). ``bundle.task_vectors``
is always dense (a factored entry is materialised on first access, on its
device), so a component that knows nothing of factors works unchanged; one
that can use them reads ``bundle.factored_task_vectors`` (``LowRank`` or
``None`` per task) and decomposes with :meth:`Decomposer.decompose_low_rank`.
See docs/plugin-guide.md, "Factored task vectors", and docs/lora.md.

Two-pass components: a preprocessor or merger that needs statistics over the
whole model before it can treat one tensor (PAVE's per-model rank allocation,
TIES with a global trim) sets ``needs_prepass = True``. The pipeline then first
streams every bundle through :meth:`prepare`, which returns a small state
object, and passes that state to each per-tensor call.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from pactframe.types import Factorization, LayerBundle, LowRank, MergedTensor

KINDS: tuple[str, ...] = ("decomposer", "preprocessor", "merger", "evaluator")


@attrs.frozen
class ParameterInfo:
    """A component parameter as shown by ``pactframe plugins``."""

    name: str
    default: Any
    type: str
    help: str


def component_field(kind: str, default: Any, *, help: str = "") -> Any:
    """A field holding another component (e.g. PACT's ``decomposer``).

    In configs the value may be a registered name (``"randomized_svd"``) or a
    mapping ``{"name": "randomized_svd", "oversampling": 10}``; the registry
    builds it before the outer component is constructed.
    """
    return attrs.field(default=default, metadata={"component_kind": kind, "help": help})


def param(default: Any, *, validator: Any = None, help: str = "", **kwargs: Any) -> Any:
    """A hyperparameter field with a help text shown by ``pactframe plugins``."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["help"] = help
    return attrs.field(default=default, validator=validator, metadata=metadata, **kwargs)


class Component(abc.ABC):
    """Common base of the four contracts."""

    name: ClassVar[str]
    kind: ClassVar[str]

    @classmethod
    def parameters(cls) -> list[ParameterInfo]:
        """The hyperparameters (attrs fields) with defaults, types and help texts."""
        if not attrs.has(cls):
            return []
        out = []
        for f in attrs.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            if f.default is attrs.NOTHING:
                default: Any = "<required>"
            elif isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
                default = f.default.factory()  # type: ignore[union-attr]
            else:
                default = f.default
            if isinstance(default, Component):
                default = default.name
            type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            out.append(
                ParameterInfo(f.name, default, str(type_name or ""), f.metadata.get("help", ""))
            )
        return out

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., **parameters}``, nested components as their own configs."""
        config: dict[str, Any] = {"name": self.name}
        cls: Any = type(self)
        if not attrs.has(cls):
            return config
        for f in attrs.fields(cls):
            if not f.init:
                continue
            value = getattr(self, f.name)
            config[f.name] = value.to_config() if isinstance(value, Component) else value
        return config


class Decomposer(Component):
    """Matrix (and optional context) -> :class:`Factorization`.

    ``requires_covariance`` marks context-aware decomposers (CO-SVD, ASVD,
    SVD-LLM), which raise :class:`~pactframe.errors.InputError` when called
    without a covariance.
    """

    kind: ClassVar[str] = "decomposer"
    requires_covariance: ClassVar[bool] = False

    @abc.abstractmethod
    def decompose(
        self,
        matrix: torch.Tensor,
        rank: int | None = None,
        *,
        covariance: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Factorization:
        """Factorize ``matrix`` (``(m, n)``), keeping the top ``rank`` components.

        ``rank=None`` keeps all ``min(m, n)``; a rank above that is clipped.
        ``covariance`` is an ``(n, n)`` input covariance for context-aware
        methods. ``generator`` seeds randomized methods (a CPU generator; draws
        are moved to ``matrix``'s device so CPU and CUDA agree).
        Half-precision input is computed in float32; the factors come back in
        the compute dtype (float32 or float64), on ``matrix``'s device.
        """

    def decompose_low_rank(
        self,
        low_rank: LowRank,
        rank: int | None = None,
        *,
        covariance: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Factorization:
        """Factorize a factored matrix ``B @ A`` (a LoRA task vector, see docs/lora.md).

        Same contract as :meth:`decompose`. This default materialises ``B @ A``
        on the factors' device and calls :meth:`decompose`, so every decomposer
        accepts factored input; ``exact_svd`` and ``randomized_svd`` override it
        with the exact factored SVD (:meth:`LowRank.svd`: QR of both factors and
        an ``r x r`` SVD), which lists at most ``r`` components.
        """
        return self.decompose(
            low_rank.materialize(), rank, covariance=covariance, generator=generator
        )


class Preprocessor(Component):
    """``LayerBundle -> LayerBundle``: rewrites the task vectors of one tensor."""

    kind: ClassVar[str] = "preprocessor"
    needs_prepass: ClassVar[bool] = False

    def prepare(self, bundles: Iterable[LayerBundle]) -> Any:
        """Whole-model statistics for two-pass preprocessors (default: none)."""
        return None

    @abc.abstractmethod
    def preprocess(self, bundle: LayerBundle, state: Any = None) -> LayerBundle:
        """Return a bundle with rewritten task vectors (same shapes, device, dtype)."""


class Merger(Component):
    """``LayerBundle -> MergedTensor``."""

    kind: ClassVar[str] = "merger"
    needs_prepass: ClassVar[bool] = False
    #: True when the method defines per-model weights (``LayerBundle.task_weights``,
    #: from ``models[].weight``); a config with weights and a merger without them
    #: is refused.
    accepts_weights: ClassVar[bool] = False
    #: the exact number of fine-tuned models the method takes (``None``: any);
    #: slerp takes one. The config parser refuses other counts.
    exact_models: ClassVar[int | None] = None

    def prepare(self, bundles: Iterable[LayerBundle]) -> Any:
        """Whole-model statistics for two-pass mergers (default: none)."""
        return None

    def supports(self, bundle: LayerBundle) -> str | None:
        """``None`` if this merger can take the bundle, else the reason it cannot.

        The pipeline sends bundles a merger does not support to the configured
        fallback merger and says so in the report.
        """
        return None

    @abc.abstractmethod
    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        """Merge the bundle's task vectors into one (possibly task-conditioned) delta."""


class Evaluator(Component):
    """Measures. ``level`` is ``"tensor"`` (weight diagnostics during the merge)
    or ``"model"`` (task accuracy after the merge)."""

    kind: ClassVar[str] = "evaluator"
    level: ClassVar[str] = "tensor"

    def evaluate_tensor(
        self, original: LayerBundle, processed: LayerBundle, merged: MergedTensor | None
    ) -> Mapping[str, Any]:
        """Per-tensor diagnostics: JSON-serialisable data for the merge report.

        ``original`` is the bundle as read, ``processed`` after the
        preprocessors, ``merged`` the merger's output (``None`` in dry runs).
        """
        raise NotImplementedError(f"{type(self).__name__} is not a tensor-level evaluator.")

    def evaluate_model(self, model: Any, tasks: Any) -> Mapping[str, Any]:
        """Model-level evaluation (e.g. per-task accuracy)."""
        raise NotImplementedError(f"{type(self).__name__} is not a model-level evaluator.")


CONTRACTS: Mapping[str, type[Component]] = {
    "decomposer": Decomposer,
    "preprocessor": Preprocessor,
    "merger": Merger,
    "evaluator": Evaluator,
}
