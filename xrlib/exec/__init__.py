"""Executors: run independent, picklable tasks in-process or in a process pool (a Ray one can follow).

A stage is *plan → run tasks → collect*: the driver plans a list of :class:`Task` objects, an
executor runs them (each task sets its own thread count where it runs) and yields their results
back to the driver, which alone writes manifests.
"""

from xrlib.exec.local import Executor, InProcessExecutor, ProcessPoolExecutor, Task, get_executor, run_all, run_task

__all__ = ["Executor", "InProcessExecutor", "ProcessPoolExecutor", "Task", "get_executor", "run_all", "run_task"]
