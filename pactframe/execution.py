"""Helpers for executors: the in-process runner, ordering, chunking, remote errors.

An executor (:class:`pactframe.contracts.Executor`) returns a *runner* from
``start()``; ``runner.map(task, units)`` yields ``(index, result)`` pairs as
units finish. The built-in executors live in ``pactframe_plugins.executors``;
what they share is here, so a third-party executor can reuse it.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from pactframe.errors import ExecutorError

T = TypeVar("T")


def unit_label(unit: Any) -> str:
    """What a unit is, for messages (``unit.label`` when it has one)."""
    return str(getattr(unit, "label", None) or repr(unit))


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


class InProcessRunner:
    """Runs units one after the other in this process.

    Tasks with ``read(unit)``/``compute(unit, inputs)`` halves (the pipeline's
    :class:`~pactframe.work.MergeJob`) get their reads done ``prefetch`` units
    ahead on one reader thread, overlapping IO with compute.
    """

    parallelism = 1

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._saved: int | None = None
        if threads is not None:
            self._saved = torch.get_num_threads()
            torch.set_num_threads(threads)

    def map(self, task: Callable[[Any], T], units: Sequence[Any]) -> Iterator[tuple[int, T]]:
        prefetch = int(getattr(task, "prefetch", 0) or 0)
        read = getattr(task, "read", None)
        compute = getattr(task, "compute", None)
        from pactframe.work import TensorUnit

        if prefetch <= 0 or read is None or compute is None:
            for i, unit in enumerate(units):
                yield i, task(unit)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pactframe-reader") as pool:
            queue: deque[tuple[int, Any, Future[Any] | None]] = deque()
            try:
                for i, unit in enumerate(units):
                    fut = pool.submit(read, unit) if isinstance(unit, TensorUnit) else None
                    queue.append((i, unit, fut))
                    if len(queue) > prefetch:
                        yield self._finish(task, queue.popleft())
                while queue:
                    yield self._finish(task, queue.popleft())
            finally:
                for _, _, fut in queue:
                    if fut is not None:
                        fut.cancel()

    @staticmethod
    def _finish(task: Any, item: tuple[int, Any, Future[Any] | None]) -> tuple[int, Any]:
        i, unit, fut = item
        if fut is None:
            return i, task(unit)
        return i, task.compute(unit, fut.result())

    def close(self) -> None:
        if self._saved is not None:
            torch.set_num_threads(self._saved)
            self._saved = None

    def __enter__(self) -> InProcessRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def ordered(pairs: Iterable[tuple[int, T]], count: int) -> Iterator[T]:
    """Values of ``(index, value)`` pairs in index order ``0 .. count - 1`` (buffers the
    ones that arrive early)."""
    waiting: dict[int, T] = {}
    nxt = 0
    for index, value in pairs:
        waiting[index] = value
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1
    if nxt != count:
        raise ExecutorError(
            f"The executor returned {nxt} of {count} results in order; units "
            f"{sorted(set(range(nxt, count)) - set(waiting))[:5]} never came back."
        )


def contiguous_chunks(items: Sequence[T], parts: int) -> list[tuple[T, ...]]:
    """``items`` cut into at most ``parts`` contiguous runs of near-equal length, in order
    (one empty run for no items)."""
    n = len(items)
    parts = max(1, min(parts, n))
    if n == 0:
        return [()]
    out = []
    for p in range(parts):
        lo, hi = (n * p) // parts, (n * (p + 1)) // parts
        out.append(tuple(items[lo:hi]))
    return out


# ------------------------------------------------------------------ errors across processes
class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker (set as its ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


def pack_exception(exc: BaseException) -> tuple[bytes | None, str, str]:
    """``(pickled exception or None, its type and message, traceback text)``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    data: bytes | None
    try:
        raw = pickle.dumps(exc)
        pickle.loads(raw)
        data = raw
    except Exception:  # noqa: BLE001 - unpicklable exceptions travel as text
        data = None
    return data, f"{type(exc).__name__}: {exc}", text


def unpack_exception(packed: tuple[bytes | None, str, str], where: str) -> BaseException:
    """The worker's exception (its own type where it pickles), the remote traceback as cause."""
    data, summary, text = packed
    exc: BaseException
    if data is not None:
        exc = pickle.loads(data)
    else:
        exc = ExecutorError(f"{where} failed: {summary}")
    exc.__cause__ = RemoteTraceback(f'"""\n{where}:\n{text}"""')
    return exc
