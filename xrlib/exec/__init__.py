"""Executors: run independent, picklable tasks in-process or in a process pool, or on a Ray cluster.

A stage is *plan → run tasks → collect*: the driver plans a list of :class:`Task` objects, an
executor runs them (each task sets its own thread count where it runs) and yields their results
back to the driver, which alone writes manifests.
"""

from xrlib.exec.local import (EXECUTORS, Executor, InProcessExecutor, ProcessPoolExecutor, Task, get_executor, run_all,
                              run_task, task_resources)

__all__ = ["EXECUTORS", "Executor", "InProcessExecutor", "ProcessPoolExecutor", "Task", "get_executor", "run_all", "run_task", "task_resources"]
