"""The shared base of the built-in SVD backbones (tsv_m, iso_c, iso_cts).

- :class:`SVDMerger`: a :class:`pactframe.MatrixMerger` (``scaling``, the non-matrix
  ``fallback`` defaulting to ``average``, the default ``supports()``) with the
  ``decomposer`` and ``route`` fields the three backbones share.
- :class:`TripletStack`: per-task singular triplets kept side by side and
  orthogonalised together, TSV-M's and Iso-CTS's ``U_hat``, ``sigma_hat``,
  ``Vh_hat`` and their polar factors.
- :func:`decompose_tasks`: the per-task decompositions of one tensor, batched
  on an accelerator (:meth:`pactframe.Decomposer.decompose_many`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch

from pactframe import Decomposer, Factorization, MatrixMerger, Merger, component_field
from pactframe.matrix import fallback_field
from pactframe_plugins.decomposers.exact_svd import ExactSVD
from pactframe_plugins.mergers._common import resolve_route, route_field, stack_polar
from pactframe_plugins.mergers.average import WeightAveraging
from pactframe_plugins.preprocessors.pact import check_orthonormal_decomposer


@attrs.frozen
class SVDMerger(MatrixMerger):
    """A :class:`~pactframe.MatrixMerger` whose matrix path is built from SVDs.

    Fields (after ``scaling``): ``fallback`` (default ``average``: the authors'
    ``theta_0 + alpha * mean_t Delta_t`` for non-matrix tensors), ``decomposer``
    (an orthonormal decomposer: ``exact_svd``, the authors', or ``randomized_svd``)
    and ``route`` (``exact`` / ``gram`` / ``auto``, :attr:`resolved_route`).
    """

    fallback: Merger | None = fallback_field(WeightAveraging())
    decomposer: Decomposer = component_field(
        "decomposer",
        ExactSVD(),
        help="the SVDs: 'exact_svd' (the authors') or 'randomized_svd' (a sketch where the "
        "method keeps a top-k, and the Gram route with route 'auto')",
        validator=check_orthonormal_decomposer,
    )
    route: str = route_field()

    @property
    def resolved_route(self) -> str:
        """``"exact"`` or ``"gram"``: ``route``, with ``auto`` following the decomposer."""
        return resolve_route(self.route, self.decomposer)


@attrs.define
class TripletStack:
    """Singular triplets of several tasks, concatenated: ``U_hat = [U_1 ... U_T]``
    (``m x K``), ``sigma_hat`` (``K``), ``Vh_hat = [Vh_1; ...; Vh_T]`` (``K x n``).

    :meth:`add` keeps a task's top ``keep`` triplets (the caller clips ``keep`` to
    the task's numerical rank); :meth:`orthogonalised` gives the polar factors of
    both stacks on their span (:func:`~pactframe_plugins.mergers._common.stack_polar`
    with the route) and ``sigma_hat``, in the order the triplets were added.
    """

    us: list[torch.Tensor] = attrs.field(factory=list)
    ss: list[torch.Tensor] = attrs.field(factory=list)
    vhs: list[torch.Tensor] = attrs.field(factory=list)

    def add(self, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, keep: int) -> None:
        """Append the top ``keep`` triplets of ``U diag(S) Vh``."""
        self.us.append(U[:, :keep])
        self.ss.append(S[:keep])
        self.vhs.append(Vh[:keep])

    @property
    def kept(self) -> list[int]:
        """How many triplets each :meth:`add` kept."""
        return [int(s.numel()) for s in self.ss]

    def orthogonalised(self, route: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U_perp, sigma_hat, Vh_perp)``: the polar factors of ``U_hat`` and ``Vh_hat``
        and the concatenated singular values (at least one triplet must be kept)."""
        u_perp = stack_polar(torch.cat(self.us, dim=1), route)
        vh_perp = stack_polar(torch.cat(self.vhs, dim=0), route)
        return u_perp, torch.cat(self.ss), vh_perp


def decompose_tasks(
    decomposer: Decomposer,
    matrix: Callable[[int], torch.Tensor],
    tasks: Sequence[int],
    rank: int,
    generators: Sequence[torch.Generator | None],
    device: torch.device,
) -> dict[int, Factorization]:
    """``{task: decomposer's top-rank factorization of matrix(task)}``.

    On the CPU one task at a time (each matrix built just before its decomposition
    and dropped after it: the peak holds one); elsewhere all of them built first
    and handed to :meth:`~pactframe.Decomposer.decompose_many` together, which the
    built-ins run as one batched call of each kernel (``T`` times fewer launches).
    ``generators[i]`` seeds ``tasks[i]``, so both ways give the same factors up to
    rounding.
    """
    if device.type == "cpu" or len(tasks) < 2:
        return {
            t: decomposer.decompose(matrix(t), rank, generator=g)
            for t, g in zip(tasks, generators)
        }
    built = [matrix(t) for t in tasks]
    found = decomposer.decompose_many(built, rank, generators=list(generators))
    return dict(zip(tasks, found))
