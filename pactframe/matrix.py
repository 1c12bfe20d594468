"""Mergers of weight matrices: the transposed-layout helpers and :class:`MatrixMerger`.

Most merging methods that decompose task vectors (TSV-M, Iso-C, Iso-CTS, a
third party's SVD method) are defined on 2-D weights only. :class:`MatrixMerger`
is their common base: a subclass implements :meth:`MatrixMerger.merge_matrix`
for 2-D weights, and the base sends every other tensor (biases, norms, 1-D and
0-D tensors) to its ``fallback`` merger, scaled by ``scaling``, or declines it
when there is no fallback.

A weight may be stored transposed (GPT-2's ``Conv1D``: ``(d_in, d_out)``,
``LayerBundle.input_axis == 0``); :func:`linear_layout` views it in the
``(d_out, d_in)`` layout a method's formulas use, and :func:`from_linear_layout`
turns the result back.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import attrs
import torch

from pactframe.contracts import Merger, StateT, param
from pactframe.errors import InputError, InvalidParameterError
from pactframe.types import LayerBundle, MergedTensor, Record
from pactframe.validation import real


def linear_layout(matrix: torch.Tensor, input_axis: int) -> torch.Tensor:
    """``matrix`` in the ``(d_out, d_in)`` layout (a transposed view when ``input_axis == 0``)."""
    return matrix if input_axis == 1 else matrix.transpose(0, 1)


def from_linear_layout(matrix: torch.Tensor, input_axis: int) -> torch.Tensor:
    """Inverse of :func:`linear_layout` (contiguous result)."""
    out = matrix if input_axis == 1 else matrix.transpose(0, 1)
    return out.contiguous()


def check_fallback(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator of a ``fallback`` field: ``None`` or a single-pass merger."""
    if value is None:
        return
    if not isinstance(value, Merger):
        raise InvalidParameterError(
            f"The {attribute.name!r} parameter of {type(instance).__name__} must be a merger "
            "(a registered merger name, a mapping with 'name', or an instance) or null. "
            f"Got {value!r} instead."
        )
    if value.needs_prepass:
        raise InvalidParameterError(
            f"The {attribute.name!r} parameter of {type(instance).__name__} must be a merger "
            f"without a whole-model prepass; got {value.name!r}, which needs one. Use e.g. "
            "'average' or 'task_arithmetic' for non-matrix tensors."
        )


def fallback_field(default: Merger | None = None) -> Any:
    """The ``fallback`` field of a :class:`MatrixMerger`: the merger for tensors that are
    not matrices. A subclass re-declares it to change the default, e.g. the built-in
    SVD mergers' ``fallback: Merger | None = fallback_field(WeightAveraging())``."""
    return attrs.field(
        default=default,
        validator=check_fallback,
        metadata={
            "component_kind": "merger",
            "nullable": True,
            "help": "merger for tensors that are not matrices (biases, norms, 1-D/0-D); "
            "its delta is multiplied by this merger's scaling, as in the authors' code. "
            "null: such tensors are declined and go to the config's top-level fallback",
        },
    )


@attrs.frozen
class MatrixMerger(Merger[StateT]):
    """Base of mergers defined on 2-D weights; subclass it and implement :meth:`merge_matrix`.

    - :meth:`merge` sends a matrix bundle (``bundle.is_matrix``: 2-D, both sides
      at least 2) to :meth:`merge_matrix`, and any other tensor to ``fallback``:
      ``scaling * fallback.merge(bundle)``, with a record saying so (the
      authors' ``theta_0 + alpha * mean_t Delta_t`` for the SVD methods when the
      fallback is ``average``).
    - :meth:`supports` declines non-floating tensors (the :class:`Merger`
      default) and, when ``fallback`` is ``None``, non-matrix tensors, which the
      pipeline then gives to the config's top-level fallback.
    - ``scaling`` is the method's global factor; :meth:`merge_matrix` must
      multiply its delta by it, so the delta is linear in ``scaling``
      (:attr:`~pactframe.contracts.Merger.linear_scaling`, checked by
      ``pactframe.testing.check_component``).

    Both fields are declared here; a subclass re-declares ``fallback`` with
    :func:`fallback_field` to give it another default, and adds its own fields.
    Use :func:`linear_layout` / :func:`from_linear_layout` when the method's
    formulas assume the ``(d_out, d_in)`` layout.
    """

    linear_scaling: ClassVar[str | None] = "scaling"

    scaling: float = param(
        1.0,
        validator=real(),
        help="alpha multiplying the merged delta (and the fallback's delta of non-matrix tensors)",
    )
    fallback: Merger | None = fallback_field(None)

    def supports(self, bundle: LayerBundle) -> str | None:
        reason = super().supports(bundle)
        if reason is None and not bundle.is_matrix and self.fallback is None:
            return (
                f"{self.name} merges matrices only (2-D, both sides >= 2) and has no "
                f"fallback for shape {list(bundle.base.shape)}"
            )
        return reason

    def merge(self, bundle: LayerBundle, state: StateT | None = None) -> MergedTensor:
        """:meth:`merge_matrix` for a matrix, ``scaling * fallback`` for any other tensor."""
        if bundle.is_matrix:
            return self.merge_matrix(bundle, state)
        return self.merge_fallback(bundle)

    @abc.abstractmethod
    def merge_matrix(self, bundle: LayerBundle, state: StateT | None = None) -> MergedTensor:
        """Merge a 2-D weight (``bundle.is_matrix``); multiply the delta by ``scaling``."""

    def merge_fallback(self, bundle: LayerBundle) -> MergedTensor:
        """``scaling * fallback.merge(bundle)`` with a record naming the rule; an
        :class:`~pactframe.errors.InputError` when there is no fallback."""
        if self.fallback is None:
            raise InputError(
                f"The {self.name!r} merger merges matrices only and has no fallback for "
                f"tensor {bundle.name!r} (shape {list(bundle.base.shape)}). Set its "
                "'fallback' (e.g. average), or let supports() send the tensor to the "
                "config's fallback."
            )
        result = self.fallback.merge(bundle)
        record_data = {"rule": "fallback", "fallback": self.fallback.name, "reason": "not a matrix"}
        return attrs.evolve(
            result,
            delta=self.scaling * result.delta,
            records=(*result.records, Record(self.name, record_data)),
        )


__all__ = [
    "MatrixMerger",
    "check_fallback",
    "fallback_field",
    "from_linear_layout",
    "linear_layout",
]
