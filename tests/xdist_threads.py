"""One core's worth of threads per pytest-xdist worker, for the subprocesses that do the heavy work.

``make test`` runs two workers on this 2-core machine. A subprocess that uses every core for torch
(OpenMP), ITK or xrlib's compiled loops while the other worker keeps a core busy spends much of its
time waiting in each parallel region for the thread that is not scheduled. In one measurement (a
script outside the repository, 2026-12-03) a smoke PGD-AT epoch beside a busy one-thread process took
3.07 s on two threads and 1.06 s on one (0.94 s on two on an idle machine). Timings that a
benchmark test prints are not asserted, so its subprocess runs on one thread too.
"""

from __future__ import annotations

import os


def one_core_env() -> dict[str, str]:
    """The environment variables that keep a subprocess on one thread when several xdist workers share
    the machine (empty otherwise): xrlib's task threads (``XRLIB_THREADS``, in a training's cache key,
    so a test that reads such a subprocess's caches in its own process sets them too), torch/OpenMP
    and ITK."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        return {"XRLIB_THREADS": "1", "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    return {}
