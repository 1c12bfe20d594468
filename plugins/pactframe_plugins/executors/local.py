"""The ``local`` executor: every unit in this process, one after the other."""

from __future__ import annotations

from typing import ClassVar

import attrs

from pactframe import hookimpl, param
from pactframe.contracts import Executor
from pactframe.execution import InProcessRunner
from pactframe.validation import integer


@attrs.frozen
class LocalExecutor(Executor):
    """This process, tensor after tensor (the default executor).

    Reads ``prefetch`` names ahead on one thread while the current tensor is merged.

    ``threads`` sets torch's intra-op threads for the merge (restored afterwards);
    ``None`` keeps the process's setting. The bytes of a merge depend on the
    thread count (BLAS and torch split their sums by thread), so give every
    executor the same ``threads`` to compare outputs byte for byte.
    """

    name: ClassVar[str] = "local"
    in_process: ClassVar[bool] = True

    threads: int | None = param(
        None,
        validator=integer(1, optional=True),
        help="torch intra-op threads during the merge (None: keep the process's setting)",
    )

    def start(self) -> InProcessRunner:
        return InProcessRunner(self.threads)


@hookimpl
def pactframe_register_executors() -> list[type[Executor]]:
    return [LocalExecutor]
