"""Local executors: run picklable tasks one after another in this process, or in a process pool.

A :class:`Task` is a picklable object (a dataclass with plain fields; no lambdas or closures) with a
``key`` (unique, names it in progress and errors), a ``threads`` count and a ``run()`` method. The
thread count changes floating-point results (e.g. weights after a few Adam steps differ between 1
and 2 threads), so :func:`run_task` sets it where the task runs, and tasks whose results depend on it
put it in their cache key. Results come back to the driver in plan order.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor as _Pool
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Task(Protocol):
    """One independent unit of work (picklable)."""

    key: str
    threads: int

    def run(self) -> Any: ...


def run_task(task: Task) -> Any:
    """Run ``task`` with its own thread count (torch intra-op threads and the BLAS/OpenMP pools)."""
    import torch

    threads = int(task.threads)
    if threads < 1:
        raise ValueError(f"task {task.key}: threads must be ≥ 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return task.run()
    finally:
        torch.set_num_threads(previous)


def _pool_worker_init() -> None:
    # One process per task slot: keep OpenMP from oversubscribing before torch sets its count.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class Executor(ABC):
    """Runs tasks and yields ``(task, result)`` pairs in plan order."""

    name = "executor"

    @abstractmethod
    def map(self, tasks: Sequence[Task], progress: bool = True, desc: str = "tasks") -> Iterator[tuple[Task, Any]]:
        """Run ``tasks``; yield each with its result, in the order given."""

    @staticmethod
    def _bar(tasks: Sequence[Task], progress: bool, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress)


class InProcessExecutor(Executor):
    """Runs the tasks one after another in this process (the default)."""

    name = "local"

    def map(self, tasks, progress=True, desc="tasks"):
        with self._bar(tasks, progress, desc) as bar:
            for task in tasks:
                bar.set_postfix_str(task.key)
                result = run_task(task)
                bar.update(1)
                yield task, result


class ProcessPoolExecutor(Executor):
    """Runs the tasks in ``workers`` processes (spawned, so no state leaks from the driver)."""

    name = "process"

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {workers}")
        self.workers = workers

    def map(self, tasks, progress=True, desc="tasks"):
        import multiprocessing as mp

        tasks = list(tasks)
        with _Pool(self.workers, mp_context=mp.get_context("spawn"), initializer=_pool_worker_init) as pool, \
                self._bar(tasks, progress, desc) as bar:
            futures = [pool.submit(run_task, t) for t in tasks]
            for task, fut in zip(tasks, futures):
                result = fut.result()
                bar.update(1)
                yield task, result


def get_executor(name: str | Executor | None = None, workers: int = 2) -> Executor:
    """An executor by name: ``"local"`` (default, in-process) or ``"process"`` (process pool)."""
    if isinstance(name, Executor):
        return name
    if name in (None, "local"):
        return InProcessExecutor()
    if name == "process":
        return ProcessPoolExecutor(workers)
    raise ValueError(f"unknown executor {name!r}; expected 'local' or 'process'")


def run_all(tasks: Iterable[Task], executor: Executor | str | None = None, **kwargs) -> list[tuple[Task, Any]]:
    """All ``(task, result)`` pairs of ``tasks`` (convenience for drivers that collect everything)."""
    return list(get_executor(executor).map(list(tasks), **kwargs))
