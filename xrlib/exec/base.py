"""The executor contract: a :class:`Task`, how it runs (:func:`run_task`), what it asks a scheduler
for (:func:`task_resources`), and the :class:`Executor` base class that the local executors
(:mod:`xrlib.exec.local`) and the Ray executor (:mod:`xrlib.exec.ray`) implement.

A :class:`Task` is a picklable object (a dataclass with plain fields; no lambdas or closures) with a
``key`` (unique, names it in progress and errors), a ``threads`` count and a ``run()`` method. The
thread count changes floating-point results (e.g. weights after a few Adam steps differ between 1
and 2 threads), so :func:`run_task` sets it where the task runs, and tasks whose results depend on it
put it in their cache key. Results come back to the driver in plan order.

Optional task attributes (read with defaults, so existing tasks need none): ``num_gpus`` (GPUs the
task needs, default 0; a training task on CUDA asks for 1) and ``shared`` (names of attributes that
hold large read-only inputs shared by many tasks, e.g. the source CT; the Ray executor puts each
such object into its object store once). :func:`task_resources` reads them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
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
