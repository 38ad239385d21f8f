"""Keeping freed memory in the process while a loop over CT-sized arrays runs (glibc only).

A virtual subject or a dataset shard allocates and frees a handful of CT-sized arrays (35 M voxels:
the deformed CT and labels, four material-density volumes, padded copies). glibc serves every
allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it with
``munmap`` on ``free``, so every subject touches new pages again; on this project's 2-core VM that
first touch costs more than the arithmetic on the array (``material_densities`` of the example CT,
three calls in a row: 3.09, 0.53 and 0.42 s; inside :func:`reuse_heap` 1.11, 0.34 and 0.30 s —
``benchmarks/profile_stages.py --parts first-touch``). :func:`reuse_heap` makes glibc
serve large blocks from its heap instead (``M_MMAP_MAX = 0``) and keep freed memory there
(``M_TRIM_THRESHOLD`` 1 GiB), so the next subject reuses the pages of the last one. Numbers do not
change — only where the bytes live. On exit the defaults are restored and ``malloc_trim`` hands
the free heap back to the system.

The settings are process-wide, so the context is reentrant (a counter) and meant for loops in a
driver or a worker process: the executors of :mod:`xrlib.exec.local` run their tasks inside it.
Set ``XRLIB_REUSE_HEAP=0`` to leave the allocator alone; on a C library without ``mallopt`` (not
glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CACHE_BLOCK_VOXELS", "cache_blocks", "heap_reuse_active", "reuse_heap", "reuse_heap_for_this_process"]

# mallopt parameters (malloc.h) and glibc's defaults for them.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP_BYTES = 1 << 30

_lock = threading.Lock()
_depth = 0


def _libc():
    if os.environ.get("XRLIB_REUSE_HEAP", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def heap_reuse_active() -> bool:
    """Whether a :func:`reuse_heap` context is open in this process (and took effect)."""
    return _depth > 0


@contextmanager
def reuse_heap() -> Iterator[bool]:
    """Serve and keep large allocations on the heap while the block runs (module docstring); yields
    whether the setting took effect (``False``: not glibc, or ``XRLIB_REUSE_HEAP=0``)."""
    global _depth
    libc = _libc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
                libc.malloc_trim(0)


_process_context = None


def reuse_heap_for_this_process() -> None:
    """Enter :func:`reuse_heap` for the rest of this process's life (once; a worker process of a pool or a
    Ray worker, whose tasks run one after another)."""
    global _process_context
    if _process_context is None:
        _process_context = reuse_heap()
        _process_context.__enter__()


#: Voxels per block of the element-wise volume maps (``xrlib.drr.physics``) and block means
#: (``xrlib.core.ct.block_mean``): about 1 MiB of float32, so a block's temporaries stay in the CPU
#: cache where whole-volume temporaries (35 M voxels for the example CT) would cost a trip to memory,
#: and fresh pages, per operation.
CACHE_BLOCK_VOXELS = 1 << 18


def cache_blocks(shape: tuple[int, ...], multiple: int = 1) -> Iterator:
    """Slices along the first axis of an array of ``shape``, each about :data:`CACHE_BLOCK_VOXELS`
    voxels and a whole number of ``multiple`` rows (the last may be shorter); ``Ellipsis`` once for a
    0-d array."""
    if len(shape) == 0:
        yield Ellipsis  # a 0-d array: one block, indexed as a 0-d view
        return
    per_row = max(1, int(math.prod(shape[1:])))
    step = multiple * max(1, CACHE_BLOCK_VOXELS // (per_row * multiple))
    for i in range(0, shape[0], step):
        yield slice(i, i + step)
