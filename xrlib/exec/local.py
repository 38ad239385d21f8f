"""Local executors: run picklable tasks one after another in this process, or in a process pool.

A :class:`Task` is a picklable object (a dataclass with plain fields; no lambdas or closures) with a
``key`` (unique, names it in progress and errors), a ``threads`` count and a ``run()`` method. The
thread count changes floating-point results (e.g. weights after a few Adam steps differ between 1
and 2 threads), so :func:`run_task` sets it where the task runs, and tasks whose results depend on it
put it in their cache key. Results come back to the driver in plan order.

Optional task attributes (read with defaults, so existing tasks need none): ``num_gpus`` (GPUs the
task needs, default 0; a training task on CUDA asks for 1) and ``shared`` (names of attributes that
hold large read-only inputs shared by many tasks, e.g. the source CT; the Ray executor puts each
such object into its object store once). :func:`task_resources` reads them. The Ray executor lives
in :mod:`xrlib.exec.ray` and is imported only by ``get_executor("ray")``.
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


def task_resources(task: Task) -> dict[str, int]:
    """What ``task`` asks a scheduler for: ``num_cpus`` (its thread count) and ``num_gpus`` (default 0)."""
    return {"num_cpus": int(task.threads), "num_gpus": int(getattr(task, "num_gpus", 0) or 0)}


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
    # The worker's tasks reuse each other's freed CT-sized blocks (xrlib.core.memory) for its whole life.
    from xrlib.core.memory import reuse_heap_for_this_process

    reuse_heap_for_this_process()


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

    def default_task_threads(self) -> int:
        """Threads for tasks whose count the driver chooses (subjects, shards): the machine's default."""
        from xrlib.core.runs import default_threads

        return default_threads()


class InProcessExecutor(Executor):
    """Runs the tasks one after another in this process (the default), with freed memory kept for the
    next task (:func:`xrlib.core.memory.reuse_heap`)."""

    name = "local"

    def map(self, tasks, progress=True, desc="tasks"):
        from xrlib.core.memory import reuse_heap

        # tasks one after another: each reuses the freed CT-sized blocks of the last (xrlib.core.memory)
        with self._bar(tasks, progress, desc) as bar, reuse_heap():
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

    def default_task_threads(self) -> int:
        return max(1, super().default_task_threads() // self.workers)

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
