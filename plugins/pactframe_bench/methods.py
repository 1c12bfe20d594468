"""The merge methods the benchmark compares, as registry configurations.

Each method is a merger plus optional preprocessors. ``scaling`` grids follow
each merger's convention (SUM for Task Arithmetic, TIES, TSV-M, Iso-C,
Iso-CTS; MEAN for averaging; EMR has no global scaling) and the authors'
validation grids (each merger's page under docs/mergers/ gives its paper). Every merger's delta is
``scaling * X`` with ``X`` independent of ``scaling`` (see each merger's
docstring), so the benchmark merges once with ``scaling = 1`` and sweeps the
scale on validation, then re-merges with the chosen value to time it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

SUM_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
TIES_GRID = (0.3, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0, 2.5)
# Wide enough that vision-small's choices fall inside the grids: the SVD-based
# backbones pick 1-5 there, but PACT-IsoC/-IsoCTS still gained at 20 (PACT removes
# most of the sum's energy, so Iso-C's mean singular value is small), and
# PACT-TA picked 1.0, the top of the plain TA grid.
SVD_GRID: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0)
SVD_GRID += (13.0, 16.0, 20.0, 25.0, 32.0, 40.0)
PACT_TA_GRID = SUM_GRID + (1.5, 2.0, 3.0)
PAVE_RHOS = (7 / 8, 15 / 16, 31 / 32)


@attrs.frozen
class Method:
    """One row of the comparison.

    ``variants`` are alternative (preprocessors, merger) settings chosen on
    validation besides ``scaling`` (TIES k, PACT K/k, PAVE rho); each is a
    mapping of overrides, ``{}`` the defaults.
    """

    name: str
    merger: dict[str, Any]
    preprocessors: tuple[dict[str, Any], ...] = ()
    scalings: tuple[float, ...] = (1.0,)
    variants: tuple[dict[str, Any], ...] = ({},)
    needs_covariances: bool = False

    def components(self) -> set[tuple[str, str]]:
        out = {("merger", self.merger["name"])}
        out |= {("preprocessor", p["name"]) for p in self.preprocessors}
        for p in (self.merger, *self.preprocessors):
            if "decomposer" in p:
                out.add(("decomposer", p["decomposer"]))
        return out

    def configure(self, variant: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(merger config, preprocessor configs) with ``variant``'s overrides applied.

        Override keys are ``"merger.<param>"`` or ``"<preprocessor name>.<param>"``.
        """
        merger = dict(self.merger)
        pres = [dict(p) for p in self.preprocessors]
        for key, value in variant.items():
            target, param = key.split(".", 1)
            if target == "merger":
                merger[param] = value
            else:
                next(p for p in pres if p["name"] == target)[param] = value
        return merger, pres


def _pact(decomposer: str) -> dict[str, Any]:
    return {"name": "pact", "decomposer": decomposer}


def _as_preset(variant: dict[str, Any]) -> dict[str, Any]:
    """A ``pact.<param>`` variant as the PACT preset's ``merger.<param>``."""
    return {
        (f"merger.{key.split('.', 1)[1]}" if key.startswith("pact.") else key): value
        for key, value in variant.items()
    }


PACT_VARIANTS: tuple[dict[str, Any], ...] = ({}, {"pact.core_rank": 30}, {"pact.task_rank": 16})


def standard_methods(pact_variants: Sequence[dict[str, Any]] = PACT_VARIANTS) -> list[Method]:
    """Every method of the comparison (issue 7), in table order."""
    methods = [
        Method("average", {"name": "average"}),
        Method("task_arithmetic", {"name": "task_arithmetic"}, scalings=SUM_GRID),
        Method(
            "ties",
            {"name": "ties"},
            scalings=TIES_GRID,
            variants=({}, {"merger.keep_fraction": 0.1}, {"merger.keep_fraction": 0.5}),
        ),
        Method(
            "dare+ties",
            {"name": "ties"},
            ({"name": "dare"},),
            scalings=TIES_GRID,
            variants=({}, {"dare.drop_probability": 0.1}, {"dare.drop_probability": 0.9}),
        ),
        Method("emr", {"name": "emr"}),  # no global scaling in the paper: scaling stays 1
        Method("tsv_m", {"name": "tsv_m"}, scalings=SVD_GRID),
        Method("iso_c", {"name": "iso_c"}, scalings=SVD_GRID),
        Method("iso_cts", {"name": "iso_cts"}, scalings=SVD_GRID),
    ]
    for backbone, grid in (
        ("task_arithmetic", PACT_TA_GRID),
        ("tsv_m", SVD_GRID),
        ("iso_c", SVD_GRID),
        ("iso_cts", SVD_GRID),
    ):
        methods.append(
            Method(
                f"pact+{backbone}",
                {"name": backbone},
                (_pact("exact_svd"),),
                scalings=grid,
                variants=tuple(pact_variants),
            )
        )
        # Efficient PACT end to end: the preset passes randomized_svd to PACT AND to
        # the backbone (tsv_m's per-task top-r; Iso-C/-CTS and TSV-M's Gram routes).
        methods.append(
            Method(
                f"efficient_pact+{backbone}",
                {"name": f"pact_{backbone}", "decomposer": "randomized_svd"},
                scalings=grid,
                variants=tuple(_as_preset(v) for v in pact_variants),
            )
        )
    pave_variants = tuple({"pave.rho": r} for r in PAVE_RHOS)
    methods += [
        Method(
            "pave+task_arithmetic",
            {"name": "task_arithmetic"},
            ({"name": "pave"},),
            scalings=SUM_GRID,
            variants=pave_variants,
            needs_covariances=True,
        ),
        Method(
            "pave+ties",
            {"name": "ties"},
            ({"name": "pave"},),
            scalings=TIES_GRID,
            variants=pave_variants,
            needs_covariances=True,
        ),
        Method(
            "pave+emr",
            {"name": "emr"},
            ({"name": "pave"},),
            variants=pave_variants,
            needs_covariances=True,
        ),
        Method(
            "pave_plain+task_arithmetic",
            {"name": "task_arithmetic"},
            ({"name": "pave", "allocation": "uniform"},),
            scalings=SUM_GRID,
            variants=pave_variants,
            needs_covariances=True,
        ),
    ]
    return methods


REDUCED_GRIDS = {
    "sum": (0.1, 0.2, 0.3, 0.5),
    "ties": (0.5, 1.0, 1.5, 2.0),
    "svd": (0.5, 1.0, 1.5, 2.0),
}


def reduced_methods(methods: Sequence[Method] | None = None) -> list[Method]:
    """The same methods with four-point scaling grids and only the default variant
    (and PAVE's paper ratio 63/64): for suites whose evaluation is expensive."""
    out = []
    for m in methods or standard_methods():
        grid: tuple[float, ...]
        backbone = m.merger["name"].removeprefix("pact_")  # a PACT preset's backbone
        if len(m.scalings) == 1:
            grid = m.scalings
        elif backbone == "ties":
            grid = REDUCED_GRIDS["ties"]
        elif backbone == "task_arithmetic":
            grid = REDUCED_GRIDS["sum"]
        else:
            grid = REDUCED_GRIDS["svd"]
        out.append(attrs.evolve(m, scalings=grid, variants=({},)))
    return out
