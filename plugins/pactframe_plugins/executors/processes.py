"""The ``processes`` executor: N worker processes on this machine, optionally pinned to GPUs."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import re
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait
from typing import Any, ClassVar

import attrs
import torch

from pactframe import hookimpl, param
from pactframe.contracts import Executor
from pactframe.errors import ExecutorError
from pactframe.execution import cpu_count, pack_exception, unit_label, unpack_exception
from pactframe.validation import integer
from pactframe.work import WorkerInfo, set_worker

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
#: units queued per worker: one running, one waiting in its pipe (keeps it busy)
PER_WORKER = 2


def _device_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_devices(instance: Any, attribute: Any, value: tuple[Any, ...]) -> None:
    from pactframe.errors import InvalidParameterError

    for d in value:
        if not isinstance(d, str) or not _DEVICE_RE.match(d):
            raise InvalidParameterError(
                f"The 'devices' parameter of {type(instance).__name__} must list 'cpu', 'cuda' "
                f"or 'cuda:N' entries. Got {d!r} in {list(value)!r}."
            )


@attrs.frozen
class ProcessExecutor(Executor):
    """``workers`` worker processes on this machine; each reads and merges its own tensors.

    Units go to the worker with room (two queued at most per worker), results
    come back as they finish and are written at their planned offsets, so the
    output is the same bytes as ``local`` with the same ``threads``. ``devices``
    pins worker ``i`` to ``devices[i % len(devices)]`` (``[cuda:0, cuda:1]``: one
    worker per GPU, or more workers than GPUs to share them); without it every
    worker uses the merge's ``device``. ``threads`` (torch intra-op threads per
    worker) defaults to the CPUs divided among the workers. Each worker holds one
    tensor name at a time: about ``(T + 3) x`` the largest tensor.

    A worker that dies (killed, out of memory) fails the merge with an
    :class:`~pactframe.errors.ExecutorError` naming the tensor it was merging, and
    nothing is written; Ctrl-C stops every worker.
    """

    name: ClassVar[str] = "processes"

    workers: int = param(2, validator=integer(1), help="worker processes")
    devices: tuple[str, ...] = param(
        (),
        converter=_device_tuple,
        validator=_check_devices,
        help="devices assigned round robin to the workers, e.g. [cuda:0, cuda:1] "
        "(empty: the merge's device)",
    )
    threads: int | None = param(
        None,
        validator=integer(1, optional=True),
        help="torch intra-op threads per worker (None: the CPUs divided among the workers)",
    )

    def worker_devices(self) -> list[str | None]:
        """Worker ``i``'s device: ``devices[i % len(devices)]`` (``None``: the merge's)."""
        d = self.devices
        return [d[i % len(d)] if d else None for i in range(self.workers)]

    def threads_per_worker(self) -> int:
        return self.threads if self.threads is not None else max(1, cpu_count() // self.workers)

    def check(self) -> list[str]:
        problems = []
        cuda = [d for d in self.devices if d.startswith("cuda")]
        if cuda:
            if not torch.cuda.is_available():
                problems.append(
                    f"devices {list(self.devices)} name CUDA devices, but torch sees none "
                    f"(torch {torch.__version__}). Remove them or install a CUDA build of torch."
                )
            else:
                count = torch.cuda.device_count()
                for d in cuda:
                    index = int(d.split(":")[1]) if ":" in d else 0
                    if index >= count:
                        problems.append(
                            f"device {d!r} does not exist: torch sees {count} CUDA device(s) "
                            f"(cuda:0 .. cuda:{count - 1})."
                        )
        return problems

    def start(self) -> ProcessRunner:
        return ProcessRunner(self)


def _context() -> Any:
    """``forkserver`` where available: one server process imports torch and pactframe once
    (no CUDA, no torch threads started) and forks each worker from it, so workers start
    in milliseconds rather than re-importing torch; ``spawn`` elsewhere."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "pactframe.work", __name__])
        return ctx
    return mp.get_context("spawn")  # pragma: no cover - macOS/Windows


class _Worker:
    def __init__(self, label: str, device: str | None, proc: Any, conn: Any) -> None:
        self.label = label
        self.device = device
        self.proc = proc
        self.conn = conn
        self.outstanding: deque[tuple[int, Any]] = deque()


class ProcessRunner:
    """The running workers of a :class:`ProcessExecutor` (one per merge)."""

    def __init__(self, executor: ProcessExecutor) -> None:
        ctx = _context()
        threads = executor.threads_per_worker()
        self.parallelism = executor.workers
        self._workers: list[_Worker] = []
        self._closed = False
        try:
            for i, device in enumerate(executor.worker_devices()):
                label = f"process-{i}"
                parent, child = ctx.Pipe(duplex=True)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(child, label, device, threads),
                    name=f"pactframe-{label}",
                    daemon=True,
                )
                proc.start()
                child.close()
                self._workers.append(_Worker(label, device, proc, parent))
        except BaseException:
            self.close(abort=True)
            raise

    # ------------------------------------------------------------------ running
    def map(self, task: Callable[[Any], Any], units: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        try:
            task_bytes = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise ExecutorError(
                f"The merge cannot be sent to worker processes: {exc}. Every component must "
                "be picklable (pactframe.testing.check_component checks it)."
            ) from exc
        message = pickle.dumps(("task", task_bytes, None), protocol=pickle.HIGHEST_PROTOCOL)
        for w in self._workers:
            w.outstanding.clear()
            self._send(w, message)
        pending: deque[tuple[int, Any]] = deque(enumerate(units))
        for depth in range(1, PER_WORKER + 1):  # one unit each first: few big units spread
            for w in self._workers:
                self._feed(w, pending, depth)
        remaining = len(units)
        while remaining:
            waitables: list[Any] = [w.conn for w in self._workers]
            waitables += [w.proc.sentinel for w in self._workers]
            for ready in wait(waitables):
                w = self._owner(ready)
                if ready is w.proc.sentinel:
                    if w.conn.poll():
                        continue  # its last messages first
                    self._died(w)
                try:
                    kind, index, payload = pickle.loads(w.conn.recv_bytes())
                except (EOFError, OSError):
                    self._died(w)
                done_index, unit = w.outstanding.popleft()
                assert done_index == index, "a worker answered out of order"
                if kind == "error":
                    raise unpack_exception(payload, f"worker {w.label} ({unit_label(unit)})")
                remaining -= 1
                self._feed(w, pending, PER_WORKER)
                yield index, payload

    def _feed(self, w: _Worker, pending: deque[tuple[int, Any]], depth: int) -> None:
        while pending and len(w.outstanding) < depth:
            index, unit = pending.popleft()
            w.outstanding.append((index, unit))
            self._send(w, pickle.dumps(("unit", index, unit), protocol=pickle.HIGHEST_PROTOCOL))

    def _send(self, w: _Worker, data: bytes) -> None:
        try:
            w.conn.send_bytes(data)
        except (BrokenPipeError, OSError):
            self._died(w)

    def _owner(self, ready: Any) -> _Worker:
        for w in self._workers:
            if ready is w.conn or ready is w.proc.sentinel:
                return w
        raise AssertionError("wait() returned an object of no worker")

    def _died(self, w: _Worker) -> None:
        w.proc.join(timeout=1)
        code = w.proc.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        doing = unit_label(w.outstanding[0][1]) if w.outstanding else "no unit"
        hint = " (SIGKILL is often the out-of-memory killer)" if code == -9 else ""
        raise ExecutorError(
            f"Worker {w.label} (pid {w.proc.pid}) {how}{hint} while merging {doing}; the merge "
            "stopped and no output was written. Check the machine's memory (each worker holds "
            "about (T + 3) x the largest tensor) or use fewer workers."
        )

    # ------------------------------------------------------------------ stopping
    def close(self, abort: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if not abort:
            stop = pickle.dumps(("stop", None, None))
            for w in self._workers:
                try:
                    w.conn.send_bytes(stop)
                except (BrokenPipeError, OSError):
                    pass
            for w in self._workers:
                w.proc.join(timeout=10)
        for w in self._workers:
            if w.proc.is_alive():
                w.proc.terminate()
        for w in self._workers:
            w.proc.join(timeout=5)
            if w.proc.is_alive():  # pragma: no cover - a worker stuck in C code
                w.proc.kill()
                w.proc.join(timeout=5)
            w.conn.close()

    def __enter__(self) -> ProcessRunner:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(abort=exc_type is not None)


def _worker_main(conn: Any, label: str, device: str | None, threads: int) -> None:
    """A worker process: run units of the current task until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops us on Ctrl-C
    torch.set_num_threads(threads)
    set_worker(WorkerInfo(label, device))
    task_bytes: bytes | None = None
    task: Any = None
    while True:
        try:
            kind, first, second = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if kind == "stop":
            return
        if kind == "task":
            task_bytes, task = first, None
            continue
        index, unit = first, second
        try:
            if task is None:
                assert task_bytes is not None, "a unit arrived before its task"
                task = pickle.loads(task_bytes)
            reply = pickle.dumps(("ok", index, task(unit)), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the driver
            reply = pickle.dumps(("error", index, pack_exception(exc)))
        conn.send_bytes(reply)


@hookimpl
def pactframe_register_executors() -> list[type[Executor]]:
    return [ProcessExecutor]
