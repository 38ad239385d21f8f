"""Local executors: run picklable tasks one after another in this process
(:class:`InProcessExecutor`, the default), or in a pool of spawned processes
(:class:`ProcessPoolExecutor`). The task contract they implement is in :mod:`xrlib.exec.base`; the
Ray executor in :mod:`xrlib.exec.ray`; :func:`~xrlib.exec.get_executor` picks one by name.

Spawned processes inherit the driver's environment, so with ``XRLIB_PORTABLE=1`` they start with the
instruction-set pin set (:mod:`xrlib.core.machine`) before they import torch or numpy.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor as _Pool

from xrlib.exec.base import Executor, run_task


def _pool_worker_init() -> None:
    # One process per task slot: keep OpenMP from oversubscribing before torch sets its count.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The worker's tasks reuse each other's freed CT-sized blocks (xrlib.core.memory) for its whole life.
    from xrlib.core.memory import reuse_heap_for_this_process

    reuse_heap_for_this_process()


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
