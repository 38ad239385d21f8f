"""Compiled loops on the task's threads: numba ``nogil`` kernels, split over contiguous index ranges.

numba is imported when a kernel is first compiled (:func:`compiled`), not with this module; it
caches the machine code on disk, so later processes load it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """``fn`` (a module-level function) compiled by numba as a GIL-free kernel, once per process."""
    import numba

    return numba.njit(nogil=True, cache=True)(fn)


def task_threads() -> int:
    """The running task's thread count: torch's intra-op threads, which
    :func:`xrlib.exec.base.run_task` sets for every task (all cores outside one)."""
    import torch

    return max(1, torch.get_num_threads())


def index_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``[a, b)`` ranges that cover ``range(n)`` in order, ``min(parts, n)`` of them (at least one), of
    sizes that differ by at most 1."""
    bounds = np.linspace(0, n, max(1, min(int(parts), n)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def run_ranges(fn: Callable[[int, int], Any], n: int, threads: int) -> list:
    """Call ``fn(a, b)`` for each of :func:`index_ranges` ``(n, threads)``, one thread per range, and
    return the results in range order.

    ``fn`` must release the GIL (a compiled ``nogil`` loop) for the threads to run at once, and
    must write disjoint parts of its output for each range; the result then does not depend on
    ``threads``. Exceptions are raised in the caller.
    """
    ranges = index_ranges(n, threads)
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    with ThreadPoolExecutor(len(ranges)) as pool:
        jobs = [pool.submit(fn, a, b) for a, b in ranges]
        return [job.result() for job in jobs]
