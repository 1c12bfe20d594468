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
TIES with a global trim) answers ``needs_prepass`` with ``True`` (a class
attribute, or a property when it depends on the parameters, as TIES's
``trim_scope``). The pipeline then first streams every bundle through
:meth:`prepare`, which returns a small state object (the component's
:data:`StateT`, e.g. TIES's ``GlobalTrimState``, PAVE's ``RankAllocation``),
and passes that state to each per-tensor call (``None`` when a tensor is
merged alone, without a prepass).

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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

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


#: The prepass state of a two-pass component: what :meth:`TwoPass.prepare` (or
#: ``prepare_reduce``) returns and every per-tensor call receives as ``state``.
#: Any picklable value; the built-ins use small frozen attrs classes (TIES's
#: ``GlobalTrimState``, PAVE's ``RankAllocation``, EMR's ``EMRState``). A component
#: declares its state type by subscripting its contract, e.g.
#: ``class TIES(Merger[GlobalTrimState])``; an unsubscripted contract means ``Any``.
StateT = TypeVar("StateT")


class TwoPass(Generic[StateT]):
    """The prepass API shared by preprocessors and mergers (see the module docstring).

    ``prepare`` returns the state (``StateT``, or ``None`` for "nothing to carry");
    each ``preprocess``/``merge`` call then receives it as ``state`` (``None``
    when a tensor is treated alone, without a prepass, which every two-pass
    component must accept: it then uses that tensor's own statistics).
    """

    @property
    def needs_prepass(self) -> bool:
        """``True`` when this instance needs the whole-model prepass (default ``False``).

        An instance-level question: a subclass may answer it with a class attribute
        (``needs_prepass: ClassVar[bool] = True``, as PAVE and EMR) or with a
        property when it depends on the parameters (TIES: only ``trim_scope:
        global``). The pipeline asks the instance (``pactframe.plan.needs_prepass``).
        """
        return False

    def prepare(self, bundles: Iterable[LayerBundle]) -> StateT | None:
        """Whole-model statistics for two-pass components (default: none)."""
        return None

    def prepare_map(self, bundles: Iterable[LayerBundle]) -> Any:
        """The partial statistics of a contiguous run of bundles (split prepass)."""
        raise NotImplementedError(f"{type(self).__name__} has no split prepass.")

    def prepare_reduce(self, partials: Iterable[Any]) -> StateT | None:
        """The state from the partials of consecutive runs, in plan order (split prepass)."""
        raise NotImplementedError(f"{type(self).__name__} has no split prepass.")


def splits_prepass(component: Any) -> bool:
    """True when ``component`` implements both ``prepare_map`` and ``prepare_reduce``."""
    cls = type(component)
    return (
        getattr(cls, "prepare_map", TwoPass.prepare_map) is not TwoPass.prepare_map
        and getattr(cls, "prepare_reduce", TwoPass.prepare_reduce) is not TwoPass.prepare_reduce
    )


def generators_for(
    matrices: Sequence[torch.Tensor], generators: Sequence[torch.Generator | None] | None
) -> list[torch.Generator | None]:
    """:meth:`Decomposer.decompose_many`'s generators: one per matrix (``None`` for all
    when not given); a count that does not match is a ``ValueError``."""
    gens: list[torch.Generator | None] = (
        list(generators) if generators is not None else [None] * len(matrices)
    )
    if len(gens) != len(matrices):
        raise ValueError(f"decompose_many: {len(matrices)} matrices but {len(gens)} generators.")
    return gens


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

    def decompose_many(
        self,
        matrices: Sequence[torch.Tensor],
        rank: int | None = None,
        *,
        generators: Sequence[torch.Generator | None] | None = None,
    ) -> list[Factorization]:
        """Factorize several matrices with one ``rank`` (the ``T`` task vectors of one
        tensor), ``generators[i]`` seeding matrix ``i``.

        The same factors as :meth:`decompose` on each, up to rounding. This default
        calls it once per matrix; a decomposer may override it with batched calls
        when the shapes match (``exact_svd``, ``randomized_svd``: one ``(T, m, n)``
        call of each kernel instead of ``T``, which is what saves time on a GPU; on
        a CPU the flops are the same).
        """
        gens = generators_for(matrices, generators)
        return [self.decompose(m, rank, generator=g) for m, g in zip(matrices, gens)]

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


class Preprocessor(TwoPass[StateT], Component):
    """``LayerBundle -> LayerBundle``: rewrites the task vectors of one tensor."""

    kind: ClassVar[str] = "preprocessor"

    @abc.abstractmethod
    def preprocess(self, bundle: LayerBundle, state: StateT | None = None) -> LayerBundle:
        """Return a bundle with rewritten task vectors (same shapes, device, dtype)."""


def float_support_reason(bundle: LayerBundle) -> str | None:
    """``None`` for a floating-point tensor, else why no merger can take the bundle.

    The one rule for integer and boolean buffers (``position_ids``, step counters):
    averaging or rescaling them is meaningless. :meth:`Merger.supports` applies it
    by default; the plan copies such tensors from the base before any merger is
    asked, so a merger never sees them in a merge.
    """
    if not bundle.base.is_floating_point():
        return (
            f"tensor {bundle.name!r} has dtype {bundle.base.dtype}; mergers average or rescale "
            "values, which is meaningless for integer and boolean buffers (keep the base value)"
        )
    return None


class Merger(TwoPass[StateT], Component):
    """``LayerBundle -> MergedTensor``.

    :meth:`merge` is called only with bundles :meth:`supports` accepted: the
    pipeline asks ``supports()`` first (in the plan) and sends declined tensors to
    the fallback merger. Direct callers do the same; ``merge()`` on a declined
    bundle (e.g. an integer buffer) is outside the contract and need not check.
    """

    kind: ClassVar[str] = "merger"
    #: True when the method defines per-model weights (``LayerBundle.task_weights``,
    #: from ``models[].weight``); a config with weights and a merger without them
    #: is refused.
    accepts_weights: ClassVar[bool] = False
    #: the exact number of fine-tuned models the method takes (``None``: any);
    #: slerp takes one. The config parser refuses other counts.
    exact_models: ClassVar[int | None] = None
    #: The name of a float parameter the merged delta is linear in: merging with
    #: that parameter set to ``a`` gives exactly ``a`` times the delta (and the
    #: task-conditioned deltas) of ``1.0``, for every tensor. ``None`` (default):
    #: no such parameter. Tools that tune it (the benchmark's scaling sweep) merge
    #: once at ``1.0`` and scale; ``pactframe.testing.check_component`` checks the
    #: linearity. The built-ins with a ``scaling`` parameter set ``"scaling"``.
    linear_scaling: ClassVar[str | None] = None

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

        The default declines non-floating tensors (:func:`float_support_reason`);
        an override that adds its own rules should keep that one
        (``super().supports(bundle)``).
        """
        return float_support_reason(bundle)

    @abc.abstractmethod
    def merge(self, bundle: LayerBundle, state: StateT | None = None) -> MergedTensor:
        """Merge the bundle's task vectors into one (possibly task-conditioned) delta."""


class Evaluator(Component):
    """Common base of the two evaluator contracts; subclass one of them.

    - :class:`TensorEvaluator` (``level = "tensor"``): weight diagnostics, called
      per tensor during the merge; its data goes into ``merge_report.json``.
    - :class:`ModelEvaluator` (``level = "model"``): called once on the whole
      merged model after the merge (task accuracy).

    A direct subclass of ``Evaluator`` that sets ``level`` and overrides the
    matching method (the form before the split) still registers and runs;
    :func:`evaluator_level` tells the two kinds apart for both forms.
    """

    kind: ClassVar[str] = "evaluator"
    level: ClassVar[str] = "tensor"

    def evaluate_tensor(
        self, original: LayerBundle, processed: LayerBundle, merged: MergedTensor | None
    ) -> Mapping[str, Any]:
        """See :meth:`TensorEvaluator.evaluate_tensor`."""
        raise NotImplementedError(f"{type(self).__name__} is not a tensor-level evaluator.")

    def evaluate_model(self, model: Any, tasks: Any) -> Mapping[str, Any]:
        """See :meth:`ModelEvaluator.evaluate_model`."""
        raise NotImplementedError(f"{type(self).__name__} is not a model-level evaluator.")


class TensorEvaluator(Evaluator):
    """Per-tensor weight diagnostics during the merge (e.g. ``intrusion_energy``).

    Configs list it under ``evaluators``; for every merged tensor the pipeline
    calls :meth:`evaluate_tensor` after the merger, in the worker that merged it,
    on the tensors' device.
    """

    level: ClassVar[str] = "tensor"

    @abc.abstractmethod
    def evaluate_tensor(
        self, original: LayerBundle, processed: LayerBundle, merged: MergedTensor | None
    ) -> Mapping[str, Any]:
        """Per-tensor diagnostics: JSON-serialisable data for the merge report.

        ``original`` is the bundle as read, ``processed`` after the preprocessors.
        ``merged`` is the merger's output, or ``None`` in a dry run (diagnostics of
        the inputs without a merge; ``pactframe.testing`` calls both ways): handle
        both. Copied tensors (non-float buffers) are not evaluated.
        """


class ModelEvaluator(Evaluator):
    """Evaluates the whole merged model once, after the merge (e.g. ``accuracy``).

    Not run by ``pactframe merge`` (a config that lists one is refused): the
    caller loads the merged model and calls :meth:`evaluate_model`, as the
    benchmark does.
    """

    level: ClassVar[str] = "model"

    @abc.abstractmethod
    def evaluate_model(self, model: Any, tasks: Any) -> Mapping[str, Any]:
        """JSON-serialisable results of ``model`` on ``tasks`` (both as the evaluator
        documents them, e.g. a callable and per-task data for ``accuracy``)."""


EVALUATOR_LEVELS: tuple[str, ...] = ("tensor", "model")


def evaluator_level(evaluator: Component | type[Component]) -> str:
    """``"tensor"`` or ``"model"`` (or a pre-split subclass's own, possibly invalid, ``level``).

    A :class:`TensorEvaluator` or :class:`ModelEvaluator` is what it subclasses;
    a direct :class:`Evaluator` subclass is what its ``level`` says.
    """
    cls = evaluator if isinstance(evaluator, type) else type(evaluator)
    if issubclass(cls, TensorEvaluator):
        return "tensor"
    if issubclass(cls, ModelEvaluator):
        return "model"
    return str(getattr(cls, "level", "tensor"))


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
