"""Executors: run independent, picklable tasks in-process or in a process pool, or on a Ray cluster.

A stage is *plan → run tasks → collect*: the driver plans a list of :class:`Task` objects, an
executor runs them (each task sets its own thread count where it runs) and yields their results
back to the driver, which alone writes manifests. The contract is in :mod:`xrlib.exec.base`, the
local executors in :mod:`xrlib.exec.local`, the Ray executor in :mod:`xrlib.exec.ray` (imported
only by ``get_executor("ray")``); :func:`get_executor` picks one by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xrlib.exec.base import Executor, Task, run_task, task_resources
from xrlib.exec.local import InProcessExecutor, ProcessPoolExecutor

__all__ = ["EXECUTORS", "Executor", "InProcessExecutor", "ProcessPoolExecutor", "Task", "get_executor", "run_all", "run_task", "task_resources"]


#: The executor names :func:`get_executor` knows.
EXECUTORS = ("local", "process", "ray")


def get_executor(name: str | Executor | None = None, workers: int = 2, address: str | None = None, **options) -> Executor:
    """An executor by name: ``"local"`` (default, in-process), ``"process"`` (a pool of ``workers``
    processes) or ``"ray"`` (:class:`xrlib.exec.ray.RayExecutor` on the cluster at ``address``;
    ``options`` go to it; Ray is imported only here)."""
    if isinstance(name, Executor):
        return name
    if name in (None, "local"):
        return InProcessExecutor()
    if name == "process":
        return ProcessPoolExecutor(workers)
    if name == "ray":
        from xrlib.exec.ray import RayExecutor

        return RayExecutor(address, **options)
    raise ValueError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")


def run_all(tasks: Iterable[Task], executor: Executor | str | None = None, **kwargs) -> list[tuple[Task, Any]]:
    """All ``(task, result)`` pairs of ``tasks`` (convenience for drivers that collect everything)."""
    return list(get_executor(executor).map(list(tasks), **kwargs))
