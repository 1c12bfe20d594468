"""The PACT paper's four combinations: PACT then Task Arithmetic, Iso-C, Iso-CTS or TSV-M.

Each preset is one merger whose parameters are PACT's (``core_rank``,
``task_rank``, ``side``, ``decomposer``, ``exclude``, ``orth_method``) followed
by its backbone's (``scaling``, ...), so one name or one short config selects
the whole method::

    merger: pact_iso_c
    merger: {name: pact_tsv_m, decomposer: randomized_svd, scaling: 1.0}   # Efficient PACT-TSVM

The preset classes are generated from :class:`PACTAligner` and the backbone
classes (:func:`pact_preset`), so their parameters, defaults and validators
can never drift from the components they combine.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from pactframe import LayerBundle, MergedTensor, Merger, hookimpl
from pactframe.errors import ContractError
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic
from pactframe_plugins.mergers.tsv_m import TSVM
from pactframe_plugins.preprocessors.pact import PACTAligner


def _init_fields(cls: type) -> list[attrs.Attribute]:
    return [f for f in attrs.fields(cls) if f.init]


ALIGNER_FIELDS: tuple[str, ...] = tuple(f.name for f in _init_fields(PACTAligner))

#: Parameters PACT and a backbone both have and that a preset passes to both:
#: ``decomposer`` (``randomized_svd`` makes PACT AND the backbone efficient).
SHARED_FIELDS: frozenset[str] = frozenset({"decomposer"})


class PACTPreset(Merger):
    """PACT (:class:`PACTAligner`) on the bundle, then the ``backbone`` merger.

    ``merge(bundle) = backbone.merge(pact.preprocess(bundle))``; the result's
    records start with PACT's record (what was filtered or passed through).
    Scaling convention: the backbone's (all four backbones here use SUM).
    Tensors PACT does not touch (excluded names, non-matrix tensors, ``T = 1``)
    reach the backbone unchanged, so with ``T = 1`` a preset equals its backbone.
    """

    backbone: ClassVar[type[Merger]]

    @property
    def aligner(self) -> PACTAligner:
        """The PACT step configured by this preset's PACT parameters."""
        return PACTAligner(**{n: getattr(self, n) for n in ALIGNER_FIELDS})

    @property
    def merger(self) -> Merger:
        """The backbone merger configured by this preset's backbone parameters."""
        names = [f.name for f in _init_fields(self.backbone)]
        return self.backbone(**{n: getattr(self, n) for n in names})

    def supports(self, bundle: LayerBundle) -> str | None:
        return self.merger.supports(bundle)

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        aligned = self.aligner.preprocess(bundle)
        merged = self.merger.merge(aligned, state)
        pact_records = aligned.records[len(bundle.records) :]
        return attrs.evolve(merged, records=(*pact_records, *merged.records))


def pact_preset(class_name: str, name: str, backbone: type[Merger], doc: str) -> type[PACTPreset]:
    """A frozen attrs :class:`PACTPreset` subclass named ``name`` whose fields are
    :class:`PACTAligner`'s followed by ``backbone``'s (same defaults, validators, help).
    A field in :data:`SHARED_FIELDS` that both have appears once (PACT's) and
    reaches both, so ``decomposer: randomized_svd`` is Efficient PACT end to end."""
    if backbone().needs_prepass:  # the default instance (needs_prepass may be a property)
        raise ContractError(
            f"PACT presets need a single-pass backbone; {backbone.name!r} has a prepass."
        )
    fields: dict[str, Any] = {}
    for f in (*_init_fields(PACTAligner), *_init_fields(backbone)):
        if f.name in fields and f.name in SHARED_FIELDS:
            continue  # one field, passed to PACT and to the backbone
        if f.name in fields:
            raise ContractError(
                f"PACT preset {name!r}: the backbone {backbone.name!r} has a parameter "
                f"{f.name!r} that PACT also has; rename one of them."
            )
        fields[f.name] = attrs.field(
            default=f.default, validator=f.validator, metadata=f.metadata, type=f.type
        )
    body = {
        "name": name,
        "backbone": backbone,
        "accepts_weights": backbone.accepts_weights,  # per-model weights reach the backbone
        "linear_scaling": backbone.linear_scaling,  # PACT does not depend on it
        "__doc__": doc,
        "__module__": __name__,
    }
    cls = attrs.make_class(class_name, fields, bases=(PACTPreset,), frozen=True)
    for key, value in body.items():
        setattr(cls, key, value)
    cls.__qualname__ = class_name
    return cls


_CONVENTION = (
    "Parameters: PACT's (core_rank K = 15, task_rank k = 8, side, decomposer "
    "(exact_svd = PACT, randomized_svd = Efficient PACT), exclude, orth_method), then "
    "the backbone's; ``decomposer`` reaches the backbone too where it has one (tsv_m, "
    "iso_c, iso_cts: with randomized_svd and route auto the backbone takes its "
    "efficient route, docs/pact.md). Shapes as the backbone: 2-D weights ``(d_out, d_in)`` are "
    "filtered; other tensors go to the backbone unchanged."
)

PACTTaskArithmetic = pact_preset(
    "PACTTaskArithmetic",
    "pact_task_arithmetic",
    TaskArithmetic,
    """PACT-TA: PACT, then Task Arithmetic ``delta = scaling * sum_t Delta_t'`` (SUM).

    Shi et al., arXiv 2606.18627 (PACT), ``pact_ta_merge``; Ilharco et al., ICLR
    2023. The PACT code's ``pact_ta_merge`` returns the MEAN ``alpha / T *
    sum_t Delta_t'`` (alpha grid 2.5..7.5); the same model here is
    ``scaling = alpha / T``. """
    + _CONVENTION,
)

PACTIsoC = pact_preset(
    "PACTIsoC",
    "pact_iso_c",
    IsoC,
    """PACT-IsoC: PACT, then Iso-C ``delta = alpha U (mean(sigma) I) Vh`` of
    ``sum_t Delta_t' = U diag(sigma) Vh`` (SUM).

    Shi et al., arXiv 2606.18627 (PACT), ``pact_isoc_merge``; Marczak et al.,
    ICML 2025. Cost ``T + 2`` SVDs per matrix (``T + 1`` of them in the PACT step,
    randomized with ``decomposer: randomized_svd``, which also moves the Iso-C
    flattening to the Gram route). """
    + _CONVENTION,
)

PACTIsoCTS = pact_preset(
    "PACTIsoCTS",
    "pact_iso_cts",
    IsoCTS,
    """PACT-IsoCTS: PACT, then Iso-CTS (common plus task-specific subspaces, flat
    spectrum; SUM).

    Shi et al., arXiv 2606.18627 (PACT), ``pact_isocts_merge``; Marczak et al.,
    ICML 2025. The PACT code's default ``common_space_fraction`` is 0.5 in code
    and 0.8 in its yaml; ours is the backbone's (0.8). """
    + _CONVENTION,
)

PACTTSVM = pact_preset(
    "PACTTSVM",
    "pact_tsv_m",
    TSVM,
    """PACT-TSVM: PACT, then TSV-M (per-task top singular triplets,
    orthogonalised by polar factors; SUM).

    Shi et al., arXiv 2606.18627 (PACT), ``pact_tsvm_merge``; Gargiulo et al.,
    CVPR 2025. Cost ``2T + 3`` SVDs per matrix (``T + 1`` in the PACT step) with
    ``exact_svd``; with ``randomized_svd`` every one of them is a sketch or a
    Gram-route eigendecomposition. The
    PACT code splits the ``min(m, n)`` slots with the remainder given to the first
    tasks: ``rank_split: balanced``; the original TSV code is ``floor`` (default). """
    + _CONVENTION,
)

PRESETS: tuple[type[PACTPreset], ...] = (PACTTaskArithmetic, PACTIsoC, PACTIsoCTS, PACTTSVM)


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return list(PRESETS)
