"""The five contracts every plugin implements.

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

To let an executor spread that prepass over workers, a two-pass component also
implements the split form of :meth:`prepare`: ``prepare_map(bundles)`` turns a
contiguous run of bundles (in plan order) into a *partial*, and
``prepare_reduce(partials)`` combines the partials, given in plan order, into
the state. The split must be exact: for every way of cutting the bundles into
contiguous runs, ``prepare_reduce(prepare_map(run) for run in runs)`` must be
the state ``prepare(bundles)`` returns, bit for bit (so integer counts can be
added in any grouping, but float sums keep per-bundle terms and are folded in
order in ``prepare_reduce``). A component without the split form still works
under every executor: its prepass then runs as one unit on one worker.
See ``docs/executors.md``.

Executors (the fifth kind) do not touch tensors: they run the pipeline's
independent work units in this process, in worker processes or on a cluster.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from pactframe.types import Factorization, LayerBundle, LowRank, MergedTensor

KINDS: tuple[str, ...] = ("decomposer", "preprocessor", "merger", "evaluator", "executor")


@attrs.frozen
class ParameterInfo:
    """A component parameter as shown by ``pactframe plugins``."""

    name: str
    default: Any
    type: str
    help: str


def component_field(kind: str, default: Any, *, help: str = "", validator: Any = None) -> Any:
    """A field holding another component (e.g. PACT's ``decomposer``).

    In configs the value may be a registered name (``"randomized_svd"``) or a
    mapping ``{"name": "randomized_svd", "oversampling": 10}``; the registry
    builds it before the outer component is constructed. ``validator`` (attrs
    style) checks the built component, e.g. that a decomposer has orthonormal factors.
    """
    return attrs.field(
        default=default, validator=validator, metadata={"component_kind": kind, "help": help}
    )


def param(default: Any, *, validator: Any = None, help: str = "", **kwargs: Any) -> Any:
    """A hyperparameter field with a help text shown by ``pactframe plugins``."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["help"] = help
    return attrs.field(default=default, validator=validator, metadata=metadata, **kwargs)


class Component(abc.ABC):
    """Common base of the five contracts."""

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


class _TwoPass:
    """The prepass API shared by preprocessors and mergers (see the module docstring)."""

    needs_prepass: ClassVar[bool] = False

    def prepare(self, bundles: Iterable[LayerBundle]) -> Any:
        """Whole-model statistics for two-pass components (default: none)."""
        return None

    def prepare_map(self, bundles: Iterable[LayerBundle]) -> Any:
        """The partial statistics of a contiguous run of bundles (split prepass)."""
        raise NotImplementedError(f"{type(self).__name__} has no split prepass.")

    def prepare_reduce(self, partials: Iterable[Any]) -> Any:
        """The state from the partials of consecutive runs, in plan order (split prepass)."""
        raise NotImplementedError(f"{type(self).__name__} has no split prepass.")


def splits_prepass(component: Any) -> bool:
    """True when ``component`` implements both ``prepare_map`` and ``prepare_reduce``."""
    cls = type(component)
    return (
        getattr(cls, "prepare_map", _TwoPass.prepare_map) is not _TwoPass.prepare_map
        and getattr(cls, "prepare_reduce", _TwoPass.prepare_reduce)
        is not _TwoPass.prepare_reduce
    )


class Decomposer(Component):
    """Matrix (and optional context) -> :class:`Factorization`.

    ``requires_covariance`` marks context-aware decomposers (CO-SVD, ASVD,
    SVD-LLM), which raise :class:`~pactframe.errors.InputError` when called
    without a covariance.
    """

    kind: ClassVar[str] = "decomposer"
    requires_covariance: ClassVar[bool] = False
    #: True for decomposers of orthonormal SVD factors whose answer on a factored
    #: input ``B @ A`` is its exact SVD from the factors (``exact_svd``,
    #: ``randomized_svd``: QR of two thin factors and an ``r x r`` SVD cost less
    #: than any sketch); see :meth:`decompose_low_rank`.
    exact_on_factors: ClassVar[bool] = False

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
        accepts factored input. Decomposers with :attr:`exact_on_factors`
        (``exact_svd``, ``randomized_svd``) get the exact factored SVD instead
        (:meth:`LowRank.svd`: QR of both factors and an ``r x r`` SVD), which
        lists at most ``r`` components.
        """
        if self.exact_on_factors and covariance is None:
            return low_rank.svd(rank)
        return self.decompose(
            low_rank.materialize(), rank, covariance=covariance, generator=generator
        )


class Preprocessor(_TwoPass, Component):
    """``LayerBundle -> LayerBundle``: rewrites the task vectors of one tensor."""

    kind: ClassVar[str] = "preprocessor"

    @abc.abstractmethod
    def preprocess(self, bundle: LayerBundle, state: Any = None) -> LayerBundle:
        """Return a bundle with rewritten task vectors (same shapes, device, dtype)."""


class Merger(_TwoPass, Component):
    """``LayerBundle -> MergedTensor``."""

    kind: ClassVar[str] = "merger"
    #: True when the method defines per-model weights (``LayerBundle.task_weights``,
    #: from ``models[].weight``); a config with weights and a merger without them
    #: is refused.
    accepts_weights: ClassVar[bool] = False
    #: the exact number of fine-tuned models the method takes (``None``: any);
    #: slerp takes one. The config parser refuses other counts.
    exact_models: ClassVar[int | None] = None

    def supports(self, bundle: LayerBundle) -> str | None:
        """``None`` if this merger can take the bundle, else the reason it cannot.

        Asked once per tensor, at plan time (:func:`pactframe.plan.make_plan`),
        before any tensor is read: the bundle holds shape-only ``meta`` tensors
        (no values), in the compute dtype, with the covariances' presence and
        ``input_axis`` as the merge will have them. Decide from shapes and dtypes
        alone (``bundle.base.ndim``, ``.shape``, ``.dtype``), never from values. The
        answer is final: the plan sends a tensor this merger refuses to the
        configured fallback merger and the report says why; the workers follow
        the plan. An exception raised here is a plan problem (``pactframe
        validate`` lists it, naming the tensor, this merger and the exception),
        not a deferral. ``pactframe.testing.check_component`` checks both.
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


class Executor(Component):
    """Runs the independent work units of a merge: here, in worker processes, on a cluster.

    The pipeline cuts a merge into units (one per tensor for the main pass, runs
    of tensors for a split prepass) and hands them, with a picklable *task*, to
    :meth:`start`'s runner: ``runner.map(task, units)`` must call ``task(unit)``
    exactly once per unit (in any process that can import the task's classes and
    read the checkpoints) and yield ``(index into units, result)`` as results
    arrive, in any order, keeping a bounded number in flight. An exception from
    ``task(unit)`` is raised from ``map`` (the original one where it pickles);
    a lost worker raises :class:`~pactframe.errors.ExecutorError` naming the unit
    (``unit.label``). ``runner.close()`` (also on Ctrl-C) stops every worker.

    ``in_process`` executors get the pipeline's sources as they are (in-memory
    state dicts included); the others receive paths and read their own tensors.
    :meth:`check` returns problems (missing package, unreachable cluster, absent
    device) before any tensor is read; ``pactframe validate`` prints them.
    """

    kind: ClassVar[str] = "executor"
    in_process: ClassVar[bool] = False

    def check(self) -> list[str]:
        """Problems with this executor's settings or environment (empty: ready)."""
        return []

    @abc.abstractmethod
    def start(self) -> Any:
        """A runner with ``map(task, units)``, ``parallelism`` (units worth running at
        once), ``close()``, and use as a context manager."""


CONTRACTS: Mapping[str, type[Component]] = {
    "decomposer": Decomposer,
    "preprocessor": Preprocessor,
    "merger": Merger,
    "evaluator": Evaluator,
    "executor": Executor,
}
