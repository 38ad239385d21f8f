"""Resampling a volume through a coarse displacement field: ``sitk.Warp``'s arithmetic, compiled.

The virtual cohort (:mod:`xrlib.anatomy.deformation`) pulls every voxel of a CT (linear) and of its
label map (nearest neighbour) through a displacement field sampled on a coarse grid (4 mm).
:func:`SimpleITK.Warp` (ITK's ``WarpImageFilter``) does this at about 100 ns per voxel and thread,
most of it generic per-voxel machinery (iterators, virtual interpolator calls); the two warps were
about 40 % of a subject's time. :func:`warp` performs the same operations, in the same order and
in double precision, in one compiled loop (numba, ``nogil``; the output's slices are split between
threads), several times faster: ``benchmarks/profile_stages.py --parts cohort`` times both on a
subject of the example CT (2 threads: the CT 0.6 s against ``sitk.Warp``'s 2.1 s, the labels in
:func:`reach_box` 0.2 s against 1.7 s for ITK's warp of the grid). Its output equals ``sitk.Warp``'s voxel for voxel on every
case compared (``tests/test_warp.py``: random float and integer volumes, LPS, identity and oblique
grids, fields that cover part of the grid, points that leave the source, half-voxel ties;
``benchmarks/bench_stages.py --stages cohort``: the example CT's virtual subjects against the
previous code), so the cohort's voxels are unchanged. Per output voxel with index ``n``:

1. its centre ``x = o + M n`` with ``M = D · diag(spacing)``, summed in ITK's order;
2. the displacement ``u(x)``: trilinear in the field's nodes as ``WarpImageFilter`` evaluates it
   (the base node clamped into the field with zero weight above it, the sum stopped once the
   weights reach exactly 1; a neighbour of zero weight, which ITK skips, adds exactly 0);
3. the source point ``x + u(x)`` as a continuous index of the source (ITK's physical-to-index
   matrix, read back from SimpleITK, so oblique grids are handled as ITK handles them); a point
   outside ``[−½, n − ½)`` on any axis gives the fill value;
4. linear: lerps along i, then j, then k, with a neighbour beyond the last voxel taken as the last
   and a negative distance (the half voxel before the first) as 0 — ``LinearInterpolateImageFunction``'s
   branches in one formula — stored as float32; nearest: ITK's round-half-up of the index
   (``⌊(2c + ½)⌉ >> 1``, exact where ``⌊c + ½⌋`` in floating point is not).

:func:`reach_box` bounds where a nearest-neighbour warp of a sparse volume (a label map) can be
non-zero, so that only that box is computed.

The first call in a fresh environment compiles the loop (a few seconds); numba caches the machine
code next to this module (or in its user cache where that is read-only), so later processes load it.
"""

from __future__ import annotations

import math
import numba
import numpy as np
import SimpleITK as sitk

from xrlib.core.ct import Volume, support_box
from xrlib.core.threads import run_ranges


def _itk_matrices(spacing, direction) -> tuple[np.ndarray, np.ndarray]:
    """ITK's index→physical matrix ``D·diag(spacing)`` and its physical→index matrix, as ITK holds them.

    Read back through a one-voxel image at the origin: ``TransformContinuousIndexToPhysicalPoint(e_j)``
    is column ``j`` of the first, ``TransformPhysicalPointToContinuousIndex(e_j)`` of the second (ITK
    inverts the first with its own routine; using its result keeps every rounding as ITK's).
    """
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    probe.SetSpacing(tuple(float(s) for s in spacing))
    probe.SetDirection(tuple(float(d) for d in np.asarray(direction, float).ravel()))
    unit = [tuple(float(v) for v in e) for e in np.eye(3)]
    to_world = np.array([probe.TransformContinuousIndexToPhysicalPoint(e) for e in unit], float).T
    to_index = np.array([probe.TransformPhysicalPointToContinuousIndex(e) for e in unit], float).T
    return to_world, to_index


@numba.njit(cache=True, inline="always")
def _base(c, end):  # pragma: no cover - compiled
    """WarpImageFilter's base node and distance along one axis of the field (nodes ``0 … end``)."""
    b = math.floor(c)
    if b < 0:
        return 0, 0.0
    if b >= end:
        return end, 0.0
    return b, c - b


@numba.njit(cache=True, inline="always")
def _load_nodes(field, b0, b1, b2, node):  # pragma: no cover - compiled
    """The displacements of the 8 nodes of the field cell with base node ``(b0, b1, b2)`` into ``node``
    (``[8, 3]``, neighbour ``c`` upper along axis ``a`` where bit ``a`` of ``c`` is set). A neighbour beyond
    the field's last node is clamped to it; :func:`_base` gives it weight 0 there."""
    nz, ny, nx = field.shape[0], field.shape[1], field.shape[2]
    for c in range(8):
        n0 = min(b0 + (c & 1), nx - 1)
        n1 = min(b1 + ((c >> 1) & 1), ny - 1)
        n2 = min(b2 + ((c >> 2) & 1), nz - 1)
        for q in range(3):
            node[c, q] = field[n2, n1, n0, q]


@numba.njit(cache=True, inline="always")
def _node_sum(node, d0, e0, d1, e1, d2, e2):  # pragma: no cover - compiled
    """WarpImageFilter::EvaluateDisplacementAtPhysicalPoint's weighted sum over the 8 nodes: the weights
    ``((w0·w1)·w2)`` (``w = d`` or ``e = 1 − d``) and the sums in ITK's neighbour order, stopped once the
    weights reach exactly 1. ITK skips a neighbour of weight 0; adding ``0 · value`` changes no sum,
    so it is not tested for here."""
    u0 = 0.0
    u1 = 0.0
    u2 = 0.0
    total = 0.0
    for c in range(8):
        w = ((d0 if c & 1 else e0) * (d1 if c & 2 else e1)) * (d2 if c & 4 else e2)
        u0 += w * node[c, 0]
        u1 += w * node[c, 1]
        u2 += w * node[c, 2]
        total += w
        if total == 1.0:
            break
    return u0, u1, u2


@numba.njit(cache=True, inline="always")
def _sample(src, c0, c1, c2, linear, fill):  # pragma: no cover - compiled
    """``src`` at continuous index ``(c0, c1, c2)`` = ``(i, j, k)``: IsInsideBuffer, then the interpolator."""
    nk, nj, ni = src.shape
    if not (c0 >= -0.5 and c0 < ni - 0.5 and c1 >= -0.5 and c1 < nj - 0.5 and c2 >= -0.5 and c2 < nk - 0.5):
        return fill
    if not linear:  # Math::RoundHalfIntegerUp
        i = np.int64(np.rint(c0 + c0 + 0.5)) >> 1
        j = np.int64(np.rint(c1 + c1 + 0.5)) >> 1
        k = np.int64(np.rint(c2 + c2 + 0.5)) >> 1
        return np.float64(src[k, j, i])
    i = max(math.floor(c0), 0)
    j = max(math.floor(c1), 0)
    k = max(math.floor(c2), 0)
    d0 = max(c0 - i, 0.0)
    d1 = max(c1 - j, 0.0)
    d2 = max(c2 - k, 0.0)
    i1 = min(i + 1, ni - 1)
    j1 = min(j + 1, nj - 1)
    k1 = min(k + 1, nk - 1)
    # np.float64, not float(): numba keeps float(float32) in single precision
    x00 = np.float64(src[k, j, i]) + (np.float64(src[k, j, i1]) - np.float64(src[k, j, i])) * d0
    x10 = np.float64(src[k, j1, i]) + (np.float64(src[k, j1, i1]) - np.float64(src[k, j1, i])) * d0
    x01 = np.float64(src[k1, j, i]) + (np.float64(src[k1, j, i1]) - np.float64(src[k1, j, i])) * d0
    x11 = np.float64(src[k1, j1, i]) + (np.float64(src[k1, j1, i1]) - np.float64(src[k1, j1, i])) * d0
    xx0 = x00 + (x10 - x00) * d1
    xx1 = x01 + (x11 - x01) * d1
    return xx0 + (xx1 - xx0) * d2


@numba.njit(cache=True, nogil=True)
def _slab_axis_aligned(src, s_scale, s_origin, field, px, py, pz, fb0, fd0, fb1, fd1, fb2, fd2,
                       k_from, k_to, linear, fill, out):  # pragma: no cover - compiled
    """Rows ``k_from … k_to`` of ``out`` when every grid is axis-aligned (diagonal directions).

    The output points (``px``, ``py``, ``pz``) and the field's base nodes and distances (``fb*``,
    ``fd*``) are then per axis, computed once by the caller with ITK's formulas (the zero
    off-diagonal terms ITK adds change nothing). Along a row the 8 nodes' displacements are loaded
    once per field cell.
    """
    nz, ny, nx = field.shape[0], field.shape[1], field.shape[2]
    node = np.empty((8, 3))
    for kk in range(k_from, k_to):
        d2 = fd2[kk]
        e2 = 1.0 - d2
        for jj in range(out.shape[1]):
            d1 = fd1[jj]
            e1 = 1.0 - d1
            cell = -1
            for ii in range(out.shape[2]):
                if fb0[ii] != cell:  # the next field cell along the row
                    cell = fb0[ii]
                    for c in range(8):  # _load_nodes, written out for the same reason
                        n0 = min(cell + (c & 1), nx - 1)
                        n1 = min(fb1[jj] + ((c >> 1) & 1), ny - 1)
                        n2 = min(fb2[kk] + ((c >> 2) & 1), nz - 1)
                        for q in range(3):
                            node[c, q] = field[n2, n1, n0, q]
                d0 = fd0[ii]
                e0 = 1.0 - d0
                # _node_sum written out: as a call (even with inline="always") this loop ran markedly slower
                u0 = 0.0
                u1 = 0.0
                u2 = 0.0
                total = 0.0
                for c in range(8):
                    w = ((d0 if c & 1 else e0) * (d1 if c & 2 else e1)) * (d2 if c & 4 else e2)
                    u0 += w * node[c, 0]
                    u1 += w * node[c, 1]
                    u2 += w * node[c, 2]
                    total += w
                    if total == 1.0:
                        break
                c0 = s_scale[0] * ((px[ii] + u0) - s_origin[0])
                c1 = s_scale[1] * ((py[jj] + u1) - s_origin[1])
                c2 = s_scale[2] * ((pz[kk] + u2) - s_origin[2])
                out[kk, jj, ii] = _sample(src, c0, c1, c2, linear, fill)


@numba.njit(cache=True, nogil=True)
def _slab_general(src, s_to_index, s_origin, field, f_to_index, f_origin, o_to_world, o_origin, lo,
                  k_from, k_to, linear, fill, out):  # pragma: no cover - compiled
    """Rows ``k_from … k_to`` of ``out`` (the box from grid index ``lo``) for any grid directions."""
    f_end = (field.shape[2] - 1, field.shape[1] - 1, field.shape[0] - 1)
    p = np.empty(3)
    c = np.empty(3)
    node = np.empty((8, 3))
    for kk in range(k_from, k_to):
        for jj in range(out.shape[1]):
            for ii in range(out.shape[2]):
                n = (float(lo[0] + ii), float(lo[1] + jj), float(lo[2] + kk))
                for r in range(3):  # ImageBase::TransformIndexToPhysicalPoint
                    acc = o_origin[r]
                    for q in range(3):
                        acc += o_to_world[r, q] * n[q]
                    p[r] = acc
                for r in range(3):  # TransformPhysicalPointToContinuousIndex (the field)
                    acc = 0.0
                    for q in range(3):
                        acc += f_to_index[r, q] * (p[q] - f_origin[q])
                    c[r] = acc
                b0, d0 = _base(c[0], f_end[0])
                b1, d1 = _base(c[1], f_end[1])
                b2, d2 = _base(c[2], f_end[2])
                _load_nodes(field, b0, b1, b2, node)
                u0, u1, u2 = _node_sum(node, d0, 1.0 - d0, d1, 1.0 - d1, d2, 1.0 - d2)
                p[0] += u0
                p[1] += u1
                p[2] += u2
                for r in range(3):  # … and of the source
                    acc = 0.0
                    for q in range(3):
                        acc += s_to_index[r, q] * (p[q] - s_origin[q])
                    c[r] = acc
                out[kk, jj, ii] = _sample(src, c[0], c[1], c[2], linear, fill)


def _is_diagonal(m: np.ndarray) -> bool:
    return bool(np.all(m[~np.eye(3, dtype=bool)] == 0.0))


def _axis_terms(lo, hi, o_origin, o_to_world, f_origin, f_to_index, f_size):
    """Per output index axis: the world coordinates of the box's voxel centres and the field's base
    node and distance for each (ITK's formulas; axis-aligned grids only)."""
    terms = []
    for a in range(3):
        n = np.arange(lo[a], hi[a], dtype=float)
        p = o_origin[a] + o_to_world[a, a] * n
        c = f_to_index[a, a] * (p - f_origin[a])
        base = [_base(float(x), int(f_size[a]) - 1) for x in c]  # a few hundred calls per axis
        terms.append((p, np.array([b for b, _ in base], np.int64), np.array([d for _, d in base], float)))
    return terms


def reach_box(field: sitk.Image, field_array: np.ndarray, src: Volume, grid: Volume):
    """Index box ``(lo, hi)`` (``(i, j, k)``, ``hi`` exclusive) of ``grid`` outside which a
    nearest-neighbour :func:`warp` of ``src`` through ``field`` (values ``field_array``, ``[z, y, x, 3]``)
    gives 0 everywhere, or ``None`` if ``src`` is all zero; pass it as ``warp(..., box=...)``.

    The warp samples ``src`` at ``x + u(x)``, with ``u`` trilinear between field nodes; ``x`` is
    trilinear in the node positions too, so the source points of a field cell lie in the bounding
    box of its 8 nodes' source points. A cell can reach a non-zero voxel only if that box meets the
    world box of ``src``'s support, widened by half a voxel (nearest-neighbour rounding). The
    answer is the grid's box around every such cell, with one voxel to spare.
    """
    box = support_box(src.array)
    if box is None:
        return None
    lo = np.array(box[0][::-1], float) - 0.5  # (i, j, k)
    hi = np.array(box[1][::-1], float) + 0.5
    world = _box_corners(lo, hi) @ src.index_to_world[:3, :3].T + src.index_to_world[:3, 3]
    box_lo, box_hi = world.min(0), world.max(0)
    f_to_world, _ = _itk_matrices(field.GetSpacing(), field.GetDirection())
    f_origin = np.asarray(field.GetOrigin(), float)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in field.GetSize()[::-1]), indexing="ij")
    q = np.stack([i, j, k], axis=-1) @ f_to_world.T + f_origin + field_array  # source point of every node
    views = [q[a:a + q.shape[0] - 1, b:b + q.shape[1] - 1, c:c + q.shape[2] - 1] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    q_lo, q_hi = views[0].copy(), views[0].copy()
    for v in views[1:]:
        np.minimum(q_lo, v, out=q_lo)
        np.maximum(q_hi, v, out=q_hi)
    reach = np.all((q_hi >= box_lo) & (q_lo <= box_hi), axis=-1)  # cells [z, y, x]
    if not reach.any():
        return np.zeros(3, int), np.zeros(3, int)
    cells = [np.flatnonzero(reach.any(axis=tuple(x for x in range(3) if x != a))) for a in (2, 1, 0)]  # x, y, z
    cell_lo = np.array([c[0] for c in cells], float)
    cell_hi = np.array([c[-1] + 1 for c in cells], float)
    wc = _box_corners(cell_lo, cell_hi) @ f_to_world.T + f_origin  # world corners of the reaching cells
    inv = np.linalg.inv(grid.index_to_world)
    idx = wc @ inv[:3, :3].T + inv[:3, 3]
    shape = np.asarray(grid.shape_ijk)
    first = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, shape)
    last = np.clip(np.ceil(idx.max(0)).astype(int) + 2, 0, shape)
    return first, last


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corners of the box ``[lo, hi]`` (3-vectors), as rows."""
    return np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)


def warp(
    src: Volume,
    field: sitk.Image,
    field_array: np.ndarray,
    grid: Volume,
    linear: bool,
    fill: float,
    box: tuple[np.ndarray, np.ndarray] | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """``src`` pulled through the displacement ``field`` onto ``grid``'s voxels: the array ``[k, j, i]``.

    ``field`` is the coarse displacement field image (LPS mm, any grid) and ``field_array`` its
    values as ``[z, y, x, 3]`` float64 (``sitk.GetArrayFromImage(field)``, passed in because the
    caller has it); ``linear`` picks trilinear interpolation (output float32) or nearest neighbour
    (output ``src``'s dtype); ``fill`` is the value where the source point leaves ``src``.
    With ``box = (lo, hi)`` (grid indices ``(i, j, k)``, ``hi`` exclusive) only that box is computed
    and the rest of the output is 0; the box's voxels are those of the whole-grid warp.
    ``threads`` defaults to SimpleITK's global thread count (what ``sitk.Warp`` would use).
    The result equals ``sitk.Warp(src, field, interpolator, grid…, fill)``; see the module docstring.
    """
    shape_ijk = np.asarray(grid.shape_ijk, np.int64)
    lo, hi = (np.zeros(3, np.int64), shape_ijk) if box is None else (np.asarray(box[0], np.int64), np.asarray(box[1], np.int64))
    out_dtype = np.float32 if linear else src.array.dtype
    out = np.zeros(grid.array.shape, out_dtype)
    if np.any(hi <= lo):
        return out
    if field_array.shape != (*field.GetSize()[::-1], 3):
        raise ValueError(f"field_array shape {field_array.shape} does not match the field image {field.GetSize()}")
    src_arr = np.ascontiguousarray(src.array, np.float32 if linear else None)
    fld = np.ascontiguousarray(field_array, np.float64)
    _, s_to_index = _itk_matrices(src.spacing, src.direction)
    _, f_to_index = _itk_matrices(field.GetSpacing(), field.GetDirection())
    o_to_world, _ = _itk_matrices(grid.spacing, grid.direction)
    s_origin, f_origin, o_origin = (np.asarray(x, float) for x in (src.origin, field.GetOrigin(), grid.origin))
    whole = np.all(lo == 0) and np.all(hi == shape_ijk)
    target = out if whole else np.empty(tuple(int(x) for x in (hi - lo)[::-1]), out_dtype)
    fill_value = float(fill)
    if all(_is_diagonal(m) for m in (s_to_index, f_to_index, o_to_world)):
        (px, fb0, fd0), (py, fb1, fd1), (pz, fb2, fd2) = _axis_terms(lo, hi, o_origin, o_to_world, f_origin, f_to_index, field.GetSize())
        args = (src_arr, np.diag(s_to_index).copy(), s_origin, fld, px, py, pz, fb0, fd0, fb1, fd1, fb2, fd2)
        kernel = _slab_axis_aligned
    else:
        args = (src_arr, s_to_index, s_origin, fld, f_to_index, f_origin, o_to_world, o_origin, lo)
        kernel = _slab_general
    n = int(threads or sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() or 1)
    run_ranges(lambda a, b: kernel(*args, a, b, linear, fill_value, target), target.shape[0], n)  # slabs of k
    if not whole:
        out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = target
    return out
