"""Intrusion Energy: how much of a task vector lies in the pre-trained core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from pactframe import (
    Decomposer,
    Evaluator,
    LayerBundle,
    MergedTensor,
    TensorEvaluator,
    component_field,
    hookimpl,
    param,
)
from pactframe.linalg import as_working
from pactframe.matrix import linear_layout
from pactframe.seeding import generator
from pactframe.types import LowRank
from pactframe.validation import integer
from pactframe_plugins.decomposers.exact_svd import ExactSVD
from pactframe_plugins.preprocessors.pact import (
    check_orthonormal_decomposer,
    core_basis,
)


def intrusion_energy(delta: torch.Tensor, core: torch.Tensor) -> float | None:
    """``E_in = ||Delta V_0K||_F^2 / ||Delta||_F^2`` in ``[0, 1]``; ``None`` for ``Delta = 0``.

    ``delta`` is ``(d_out, d_in)``, ``core`` an orthonormal ``V_0K`` ``(d_in, K)``.
    """
    total = float(torch.linalg.vector_norm(delta)) ** 2
    if total == 0.0:
        return None
    inside = float(torch.linalg.vector_norm(delta @ core)) ** 2
    return min(max(inside / total, 0.0), 1.0)


def intrusion_energy_low_rank(delta: LowRank, core: torch.Tensor) -> float | None:
    """:func:`intrusion_energy` of a factored ``Delta = B A`` (LoRA): ``Delta V_0K`` is
    ``B (A V_0K)``, and both squared norms come from the factors (no ``d_out x d_in``
    matrix is formed)."""
    total = delta.squared_norm()
    if total == 0.0:
        return None
    inside = LowRank(delta.B, delta.A @ core).squared_norm()
    return min(max(inside / total, 0.0), 1.0)


@attrs.frozen
class IntrusionEnergy(TensorEvaluator):
    """Intrusion Energy of every task vector, before and after the preprocessors.

    PACT paper (Shi et al., arXiv 2606.18627), eq. (37)::

        E_in(t, l) = ||Delta_t V_0K||_F^2 / ||Delta_t||_F^2

    with ``V_0K`` ``(d_in, K)`` the top-K right (input-side, following
    ``bundle.input_axis``) singular vectors of the pre-trained weight
    ``W_0`` ``(d_out, d_in)``, clipped to its numerical rank, and ``Delta_t``
    ``(d_out, d_in)``. ``E_in`` is the fraction of the task vector's energy that
    writes along the pre-trained core: 0 means the task never touches it, 1 that
    it lives inside it. It lies in ``[0, 1]`` and does not change when
    ``Delta_t`` is scaled.

    Returns ``{"core_rank": K, "before": {task: E_in}, "after": {task: E_in}}``
    (``before`` on the bundle as read, ``after`` on the preprocessed one; a zero
    task vector reports ``null``). Non-matrix tensors and a zero base report
    ``{"skipped": reason}`` instead. One decomposition of ``W_0`` per tensor.
    ``merged`` is not used, so a dry run (``merged=None``) reports the same.
    """

    name: ClassVar[str] = "intrusion_energy"

    core_rank: int = param(
        15,
        validator=integer(1),
        help="K: top right singular vectors of the pre-trained weight (clipped to the matrix)",
    )
    decomposer: Decomposer = component_field(
        "decomposer",
        ExactSVD(),
        help="decomposition giving V_0K (exact_svd or randomized_svd)",
        validator=check_orthonormal_decomposer,
    )

    def evaluate_tensor(
        self, original: LayerBundle, processed: LayerBundle, merged: MergedTensor | None
    ) -> Mapping[str, Any]:
        if not original.is_matrix:
            return {"skipped": f"not a matrix (shape {list(original.base.shape)})"}
        if not bool(torch.any(original.base != 0)):
            return {"skipped": "the base weight is all zeros: there is no pre-trained core"}
        axis = original.input_axis
        base = as_working(linear_layout(original.base, axis))
        K = min(self.core_rank, min(base.shape))
        f = self.decomposer.decompose(base, K, generator=generator(original.seed, self.name))
        core = core_basis(f, "right")

        def energy(bundle: LayerBundle, t: int) -> float | None:
            low_rank = bundle.factored_task_vectors[t]
            if low_rank is None:
                tv = bundle.task_vectors[t]
                return intrusion_energy(as_working(linear_layout(tv, axis)).to(core.dtype), core)
            lin = low_rank if axis == 1 else low_rank.transpose()
            lin = lin.map(lambda x: as_working(x).to(core.dtype))
            return intrusion_energy_low_rank(lin, core)

        def energies(bundle: LayerBundle) -> dict[str, float | None]:
            return {name: energy(bundle, t) for t, name in enumerate(bundle.task_names)}

        return {
            "core_rank": int(core.shape[1]),
            "before": energies(original),
            "after": energies(processed),
        }


@hookimpl
def pactframe_register_evaluators() -> list[type[Evaluator]]:
    return [IntrusionEnergy]
