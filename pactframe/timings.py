"""The wall-clock timings of one merge run (the report's ``timings`` section).

One :class:`RunTimings` belongs to one run: whoever starts the run (``MergePipeline.run``,
``pactframe.api.merge_state_dicts``, the LoRA writer) makes it, the pipeline's passes
fill in their phases, and :func:`pactframe.report.build_report` reads it. Nothing
is kept on the pipeline object but a reference to the last run's timings.
"""

from __future__ import annotations

import time

import attrs

#: the phases in report order; a phase a run did not go through is left out
PHASES = ("plan_s", "prepass_s", "compute_s", "main_pass_s", "total_s")


@attrs.define
class RunTimings:
    """Seconds per phase of one run (``None``: the run has not been through it).

    ``plan_s``: checks and plan, from the start; ``prepass_s``: the two-pass
    components' prepass; ``compute_s``: the workers' per-tensor seconds, summed;
    ``main_pass_s``: wall time of the main pass; ``total_s``: from the start to the
    report."""

    plan_s: float | None = None
    prepass_s: float | None = None
    compute_s: float | None = None
    main_pass_s: float | None = None
    total_s: float | None = None
    started: float = attrs.field(factory=time.perf_counter, repr=False, eq=False)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def finish(self) -> RunTimings:
        """Set ``total_s`` to the seconds since the run started."""
        self.total_s = self.elapsed()
        return self

    def as_dict(self) -> dict[str, float]:
        """The phases the run went through, in seconds (the report rounds them)."""
        return {p: float(v) for p in PHASES if (v := getattr(self, p)) is not None}
