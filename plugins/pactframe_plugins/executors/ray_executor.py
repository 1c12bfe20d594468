"""The ``ray`` executor: Ray tasks on a cluster (or on a local Ray started for the merge)."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import attrs

from pactframe import hookimpl, param
from pactframe.contracts import Executor
from pactframe.errors import ExecutorError, InvalidParameterError
from pactframe.execution import RemoteTraceback, unit_label
from pactframe.io.units import parse_size
from pactframe.validation import integer, real

INSTALL_HINT = "pip install 'pactframe[ray]' (on the driver and on every node of the cluster)"


def _size_or_none(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, what="the 'memory' parameter of RayExecutor")
    except Exception as exc:  # ConfigError -> the parameter error the registry expects
        raise InvalidParameterError(str(exc)) from exc


def _check_address(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameterError(
            f"The 'address' parameter of {type(instance).__name__} must be None (a local Ray), "
            f"'auto' (this node's cluster), 'HOST:PORT' or 'ray://HOST:PORT'. Got {value!r}."
        )


@attrs.frozen
class RayExecutor(Executor):
    """One Ray task per unit, on an existing cluster or on a local Ray started for the merge.

    ``address``: ``None`` starts Ray on this machine for the merge (``workers x
    num_cpus`` CPUs, on 127.0.0.1, no dashboard) and stops it afterwards;
    ``"auto"`` joins the cluster this node belongs to (``ray start`` ran here);
    ``"ray://HOST:10001"`` connects through Ray Client. If this process already
    called ``ray.init``, that connection is used and left open.

    Every task reads its own tensors from the checkpoint paths in the config, so
    every node must see them at the same path (shared storage); only the merged
    tensors travel back. At most ``workers`` tasks are in flight, so the driver
    holds at most that many results. Each task reserves ``num_cpus``, ``num_gpus``
    and ``memory`` (bytes or ``"8GB"``) from Ray's scheduler and runs torch with
    ``threads`` intra-op threads (default: ``num_cpus`` rounded down, at least 1).
    A task whose worker or node dies is retried by Ray up to ``max_retries``
    times, then the merge fails naming the tensor; an exception raised by a
    component is not retried. Ctrl-C cancels every task in flight.
    """

    name: ClassVar[str] = "ray"

    address: str | None = param(
        None,
        validator=_check_address,
        help="None: a local Ray for this merge; 'auto': this node's cluster; 'ray://HOST:PORT'",
    )
    workers: int = param(2, validator=integer(1), help="tasks in flight at once")
    num_cpus: float = param(
        1.0, validator=real(0.0, closed="neither"), help="CPUs Ray reserves per task"
    )
    num_gpus: float = param(0.0, validator=real(0.0), help="GPUs Ray reserves per task")
    memory: int | None = param(
        None,
        converter=_size_or_none,
        help="memory Ray reserves per task, bytes or e.g. '8GB' (None: no reservation)",
    )
    threads: int | None = param(
        None,
        validator=integer(1, optional=True),
        help="torch intra-op threads per task (None: num_cpus rounded down, at least 1)",
    )
    max_retries: int = param(
        3, validator=integer(0), help="Ray's retries of a task whose worker or node died"
    )

    def threads_per_task(self) -> int:
        return self.threads if self.threads is not None else max(1, int(self.num_cpus))

    def check(self) -> list[str]:
        try:
            import ray
        except ImportError:
            return [f"Ray is not installed: {INSTALL_HINT}."]
        if self.address is None and not ray.is_initialized():
            return []  # the merge starts a local Ray
        connected_here = False
        try:
            if not ray.is_initialized():
                ray.init(address=self.address, **_quiet())
                connected_here = True
            problems = []
            if self.num_gpus > 0:
                gpus = float(ray.cluster_resources().get("GPU", 0))
                if gpus < self.num_gpus:
                    problems.append(
                        f"num_gpus={self.num_gpus} per task, but the cluster has {gpus:g} GPU(s)."
                    )
            return problems
        except Exception as exc:  # noqa: BLE001 - Ray raises several types when unreachable
            return [
                f"cannot reach the Ray cluster at {self.address!r}: {exc}. Start it with "
                "`ray start --head` (and `ray start --address=HEAD:6379` on the workers), or "
                "drop 'address' to run a local Ray."
            ]
        finally:
            if connected_here:
                ray.shutdown()

    def start(self) -> RayRunner:
        return RayRunner(self)


def _quiet() -> dict[str, Any]:
    return {"logging_level": "warning", "log_to_driver": False}


class RayRunner:
    """A connection to Ray for one merge."""

    def __init__(self, executor: RayExecutor) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ExecutorError(f"The 'ray' executor needs Ray: {INSTALL_HINT}.") from exc
        self._ray = ray
        self.executor = executor
        self.parallelism = executor.workers
        self._owned = False
        self._inflight: dict[Any, tuple[int, Any]] = {}
        if not ray.is_initialized():
            if executor.address is None:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(
                    num_cpus=max(1, math.ceil(executor.workers * executor.num_cpus)),
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    **_quiet(),
                )
            else:
                try:
                    ray.init(address=executor.address, **_quiet())
                except Exception as exc:  # noqa: BLE001
                    raise ExecutorError(
                        f"Cannot reach the Ray cluster at {executor.address!r}: {exc}."
                    ) from exc
            self._owned = True
        options: dict[str, Any] = {
            "num_cpus": executor.num_cpus,
            "num_gpus": executor.num_gpus,
            "max_retries": executor.max_retries,
            "retry_exceptions": False,
        }
        if executor.memory is not None:
            options["memory"] = executor.memory
        self._remote = ray.remote(_run_unit).options(**options)

    def map(self, task: Callable[[Any], Any], units: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        task_ref = ray.put(task)
        threads = self.executor.threads_per_task()
        todo = iter(enumerate(units))
        pending = self._inflight  # close() cancels what is left (Ctrl-C in the consumer)
        pending.clear()

        def submit() -> None:
            for index, unit in todo:
                pending[self._remote.remote(task_ref, unit, threads)] = (index, unit)
                return

        try:
            for _ in range(self.parallelism):
                submit()
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                index, unit = pending.pop(ref)
                value = self._get(ref, unit)
                submit()
                yield index, value
        finally:
            self._cancel()

    def _cancel(self) -> None:
        for ref in list(self._inflight):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._inflight.clear()

    def _get(self, ref: Any, unit: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from RemoteTraceback(f"Ray task of {unit_label(unit)}:\n{exc}")
            raise
        except ray.exceptions.RayError as exc:
            raise ExecutorError(
                f"Ray lost the task of {unit_label(unit)} (after up to "
                f"{self.executor.max_retries} retries): {type(exc).__name__}: {exc}. The merge "
                "stopped and no output was written. Check the nodes' memory (each task holds "
                "about (T + 3) x the largest tensor) and that every node sees the checkpoints."
            ) from exc

    def close(self) -> None:
        self._cancel()
        if self._owned:
            self._owned = False
            self._ray.shutdown()

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _run_unit(task: Callable[[Any], Any], unit: Any, threads: int) -> Any:
    """The Ray task: one unit, with the torch thread count set explicitly."""
    import torch

    from pactframe.work import WorkerInfo, set_worker

    torch.set_num_threads(threads)
    set_worker(WorkerInfo(f"ray-{socket.gethostname()}-{os.getpid()}"))
    return task(unit)


@hookimpl
def pactframe_register_executors() -> list[type[Executor]]:
    return [RayExecutor]
