"""xrlib.core.memory.reuse_heap: reentrant, restored on exit, an opt-out, and the same numbers inside it."""

from __future__ import annotations

import numpy as np

from xrlib.core import memory


def test_reuse_heap_is_reentrant_and_restored():
    assert not memory.heap_reuse_active()
    with memory.reuse_heap() as took:
        assert memory.heap_reuse_active() == took
        with memory.reuse_heap():
            assert memory.heap_reuse_active() == took
        assert memory.heap_reuse_active() == took  # the outer block still holds it
    assert not memory.heap_reuse_active()


def test_reuse_heap_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("XRLIB_REUSE_HEAP", "0")
    with memory.reuse_heap() as took:
        assert took is False and not memory.heap_reuse_active()


def test_large_arrays_give_the_same_numbers_inside_and_outside():
    from xrlib.drr.materials import material_densities

    hu = np.random.default_rng(0).integers(-1100, 2000, (40, 120, 120)).astype(np.float32)
    outside = material_densities(hu)
    with memory.reuse_heap():
        inside = [material_densities(hu) for _ in range(2)]  # the second reuses the first's freed blocks
    for got in inside:
        assert all(np.array_equal(got[m], outside[m]) for m in outside)
