"""HU → material maps: the CT side of the physics ladder (what a voxel is made of, and how dense it is).

Units of the maps
-----------------
* Linear attenuation μ is in **1/mm** (so that a projector line integral, in channel units × mm,
  is dimensionless); mass density ρ in **g/cm³**. A per-material line integral ``L = ∫ρ dl`` is in
  **g/cm³·mm**. HU is Hounsfield units (water 0, air −1000).

Maps
----
* *naive*: μ = μ_water(E)·max(0, 1 + HU/1000) at one energy (:func:`naive_mu`).
* *heuristic*: the same, with every voxel below an air threshold zeroed (:func:`heuristic_mu`).
* *realistic*: HU → (material, density) (:func:`material_densities`, :func:`material_density_crops`):
  hard thresholds (:data:`DEFAULT_THRESHOLDS`) pick one of :data:`MATERIALS`, the Schneider 2000
  HU→density curve gives its density; the spectral chain (:mod:`xrlib.drr.physics`) turns the
  per-material line integrals into detector signals.

Integer HU (CTs are stored as int16) take compiled table lookups on the task's threads; the results
equal the NumPy formulas bit for bit (tests compare them).
"""

from __future__ import annotations

import numpy as np
import xraydb

from xrlib.core.memory import cache_blocks
from xrlib.core.threads import compiled, run_ranges, task_threads

MATERIALS = ("air", "lung", "soft_tissue", "bone")

#: HU → mass density (g/cm³), piecewise linear: Schneider, Bortfeld & Schlegel 2000, Phys Med Biol
#: 45:459 (the calibration table distributed with GATE as ``Schneider2000DensitiesTable.txt``).
#: The step at 100/101 HU is where their fit switches from soft tissue to skeletal tissue; the
#: 101–3000 HU branch is linear (≈ 0.59 mg/cm³ per HU). Values outside the table are clamped,
#: so HU < −1000 gives dry air (1.21e-3 g/cm³, NIST) and metal saturates at 2.8 g/cm³.
_SCHNEIDER_HU = np.array([-1000.0, -98.0, -97.0, 14.0, 23.0, 100.0, 101.0, 1600.0, 3000.0])
_SCHNEIDER_RHO = np.array([1.21e-3, 0.93, 0.930486, 1.03, 1.031, 1.1199, 1.0762, 1.9642, 2.8])

#: Material segmentation thresholds (HU), lower bounds of lung, soft tissue and bone.
#: −950: the standard "low attenuation area" cut-off (LAA−950) below which lung voxels are
#: considered gas, so normal parenchyma (≈ −900…−700) stays lung. −120: upper end of Schneider
#: 2000's lung group (−950…−121), so fat (≈ −100) is soft tissue. 300: above the usual range of
#: soft tissue, blood and trabecular bone partial volume; mineralised bone dominates beyond.
DEFAULT_THRESHOLDS = (-950.0, -120.0, 300.0)

def mu_water_per_mm(energy_kev: float = 60.0) -> float:
    """Linear attenuation of water (1 g/cm³) at ``energy_kev`` in 1/mm (xraydb, Elam tables)."""
    return float(xraydb.material_mu("H2O", energy_kev * 1e3, density=1.0)) / 10.0


def _naive_mu_range(hu, mu_w, out, a, b):  # pragma: no cover - runs compiled (numba)
    """``out[a:b]`` of :func:`naive_mu` on flat arrays, in float32: the operations of the NumPy formula."""
    k = np.float32(1000.0)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for n in range(a, b):
        o = np.float32(hu[n]) / k + one
        if o < zero:  # np.maximum(o, 0): NaN stays NaN
            o = zero
        out[n] = o * mu_w


def naive_mu(hu: np.ndarray, energy_kev: float = 60.0) -> np.ndarray:
    """Monochromatic μ (1/mm, float32): μ_water(E)·max(0, 1 + HU/1000).

    Treats every voxel as water of relative density 1 + HU/1000 (HU's definition with μ_air ≈ 0).
    Computed in float32 with the operations of ``np.maximum(np.float32(hu) / 1000 + 1, 0) * μ_w`` in
    that order, in one compiled pass over the voxels on the task's threads (no float32 copy of an
    integer CT, no temporaries; a test compares it with the NumPy formula bit for bit).
    """
    hu = _as_voxels(hu)
    mu_w = np.float32(mu_water_per_mm(energy_kev))
    out = np.empty(hu.shape, np.float32)
    flat_hu, flat_out = hu.reshape(-1), out.reshape(-1)
    kernel = compiled(_naive_mu_range)
    run_ranges(lambda a, b: kernel(flat_hu, mu_w, flat_out, a, b), flat_hu.size, task_threads())
    return out


def heuristic_mu(hu: np.ndarray, energy_kev: float = 60.0, air_threshold_hu: float = -800.0) -> np.ndarray:
    """xreg-style contrast: :func:`naive_mu`, with voxels below ``air_threshold_hu`` set to 0.

    Removing everything below the threshold (air outside the patient, CT noise in air, part of
    the lung) stops that low-density material from adding a haze to every ray, which raises the
    contrast of tissue against lung at the cost of dropping the lung parenchyma signal.
    """
    hu = np.asarray(hu)
    if not (hu.dtype.kind in "iu" and hu.dtype.itemsize <= 2):  # int16 HU compare exactly with a float32
        hu = np.asarray(hu, np.float32)
    mu = naive_mu(hu, energy_kev)
    thr = np.float32(air_threshold_hu)
    for b in cache_blocks(hu.shape):
        np.copyto(mu[b], np.float32(0.0), where=hu[b] < thr)
    return mu


def material_densities(hu: np.ndarray, thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS) -> dict[str, np.ndarray]:
    """Split a HU volume into per-material mass-density volumes (g/cm³, float32, input's shape).

    Each voxel is assigned to exactly one of :data:`MATERIALS` by hard thresholds
    ``(t_lung, t_soft, t_bone)`` (lower bounds, HU; see :data:`DEFAULT_THRESHOLDS`): air below
    ``t_lung``, lung up to ``t_soft``, soft tissue up to ``t_bone``, bone above. Its density is
    the Schneider 2000 HU→density curve (see ``_SCHNEIDER_HU``) and it is 0 in the other channels.
    """
    t32 = _threshold_array(thresholds)
    hu = _as_voxels(hu)
    out = {m: np.empty(hu.shape, np.float32) for m in MATERIALS}
    flat = hu.reshape(-1)
    threads = task_threads()
    if _takes_table_path(hu, threads):
        # Integer HU (CTs are stored as int16): look the density and the material up in tables over the
        # integer HU range (the same values as the interpolation below), in one compiled pass.
        lo, hi, rho_of, label_of = _material_tables(t32)
        channels = [out[m].reshape(-1) for m in MATERIALS]
        table = compiled(_material_table_range)
        run_ranges(lambda a, b: table(flat, lo, hi, rho_of, label_of, *channels, a, b), flat.size, threads)
        return out
    hu = np.asarray(hu, np.float32)
    for b in cache_blocks(hu.shape):  # block by block: see xrlib.core.memory.CACHE_BLOCK_VOXELS
        rho = _density_table(hu[b])
        label = np.searchsorted(t32, hu[b], side="right")  # 0..3 = MATERIALS order
        for i, m in enumerate(MATERIALS):
            o = out[m][b]
            o.fill(0.0)
            np.copyto(o, rho, where=label == i)
    return out


def _threshold_array(thresholds) -> np.ndarray:
    """``thresholds`` as float32 HU, checked to be three increasing values."""
    t = [float(x) for x in thresholds]
    if len(t) != 3 or not t[0] < t[1] < t[2]:
        raise ValueError(f"thresholds must be three increasing HU values, got {thresholds}")
    return np.asarray(t, np.float32)


def _takes_table_path(hu: np.ndarray, threads: int) -> bool:
    """Whether the material maps of ``hu`` (from :func:`_as_voxels`) take the compiled table lookup:
    more than 65536 voxels, all integral."""
    flat = hu.reshape(-1)
    integral = compiled(_integral_range)
    return flat.size > 65536 and (hu.dtype.kind in "iu" or all(run_ranges(lambda a, b: integral(flat, a, b), flat.size, threads)))


def _material_tables(t32: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(lo, hi, rho_of, label_of)``: the density (g/cm³) and material index of every integer HU in
    ``lo … hi`` (entry ``idx`` is HU ``lo + idx``), for the thresholds ``t32``."""
    lo, hi = int(_SCHNEIDER_HU[0]) - 1024, 4096
    grid = np.arange(lo, hi + 1, dtype=np.float32)
    return lo, hi, _density_table(grid), np.searchsorted(t32, grid, side="right").astype(np.uint8)


def material_density_crops(
    hu: np.ndarray, thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS, margin: int = 1
) -> dict[str, tuple[np.ndarray, tuple[int, int, int]] | None]:
    """Each material's density volume of :func:`material_densities`, cropped to its non-zero voxels.

    For each of :data:`MATERIALS`: ``(array, start)``, where ``array`` is the material's density on the
    smallest box holding its non-zero voxels grown by ``margin`` voxels per side (within the grid), and
    ``start`` the box's first index ``(k, j, i)``; ``None`` for a material with no voxel. The arrays equal
    :func:`xrlib.core.ct.crop_to_support` of :func:`material_densities`' volumes bit for bit (a test
    compares them), which is what a projector integrates.

    Integer HU (CTs are stored as int16) take two compiled passes — the materials' boxes, then each
    box filled from the density table — so no CT-sized channel is allocated in full and none is copied
    into its crop: for the example CT the soft-tissue and bone channels hold 76 % and 43 % of the grid.
    Other input takes :func:`material_densities` and crops its volumes.
    """
    from xrlib.core.ct import crop_array, margin_box

    t32 = _threshold_array(thresholds)
    if int(margin) != margin or margin < 0:
        raise ValueError(f"margin must be a whole number of voxels ≥ 0, got {margin}")
    hu = _as_voxels(hu)
    if hu.ndim != 3:
        raise ValueError(f"need a 3-D HU volume, got shape {hu.shape}")
    threads = task_threads()
    if not _takes_table_path(hu, threads):
        return {m: crop_array(vol, int(margin)) for m, vol in material_densities(hu, thresholds).items()}
    lo_hu, hi_hu, rho_of, label_of = _material_tables(t32)
    run_of = np.where(rho_of != 0, label_of, len(MATERIALS)).astype(np.uint8)
    boxes_of = compiled(_material_boxes_range)
    parts = run_ranges(lambda a, b: boxes_of(hu, lo_hu, hi_hu, run_of, len(MATERIALS), a, b), hu.shape[0], threads)
    first = np.min([p[:, 0] for p in parts], axis=0)  # (material, axis k/j/i); n for an absent material
    last = np.max([p[:, 1] for p in parts], axis=0)
    fill = compiled(_material_fill_range)
    out = {}
    for c, m in enumerate(MATERIALS):
        if last[c, 0] < 0:
            out[m] = None
            continue
        lo, hi = margin_box(([int(x) for x in first[c]], [int(x) for x in last[c]]), hu.shape, int(margin))
        arr = np.empty(tuple(b - a for a, b in zip(lo, hi)), np.float32)
        run_ranges(lambda a, b: fill(hu, lo_hu, hi_hu, rho_of, label_of, c, lo[0], lo[1], lo[2], arr, a, b),
                   arr.shape[0], threads)
        out[m] = (arr, tuple(lo))
    return out


def _material_boxes_range(hu, lo, hi, run_of, n_labels, a, b):  # pragma: no cover - compiled
    """First and last index ``(k, j, i)`` of each material's non-zero voxels in slices ``hu[a:b]``, as an
    array ``(n_labels, 2, 3)``: ``[:, 0]`` the first (the grid's size where absent), ``[:, 1]`` the last (−1).
    ``run_of[idx]`` is the material of table entry ``idx``, or ``n_labels`` where its density is 0.

    A row is scanned for its runs of one material (few per row), so the per-voxel work is the table
    lookup and one comparison."""
    nk, nj, ni = hu.shape
    box = np.empty((n_labels, 2, 3), np.int64)
    for c in range(n_labels):
        box[c, 0, 0], box[c, 0, 1], box[c, 0, 2] = nk, nj, ni
        box[c, 1, :] = -1
    for k in range(a, b):
        for j in range(nj):
            prev, start = np.int64(n_labels), 0
            for i in range(ni + 1):
                c = np.int64(n_labels) + 1  # past the row's end: closes its last run
                if i < ni:
                    v = min(max(np.float32(hu[k, j, i]), np.float32(lo)), np.float32(hi))
                    c = np.int64(run_of[np.int64(v) - lo])
                if c != prev:
                    if prev < n_labels:  # the run [start, i) of material prev
                        box[prev, 0, 0] = min(box[prev, 0, 0], k)
                        box[prev, 1, 0] = max(box[prev, 1, 0], k)
                        box[prev, 0, 1] = min(box[prev, 0, 1], j)
                        box[prev, 1, 1] = max(box[prev, 1, 1], j)
                        box[prev, 0, 2] = min(box[prev, 0, 2], start)
                        box[prev, 1, 2] = max(box[prev, 1, 2], i - 1)
                    prev, start = c, i
    return box


def _material_fill_range(hu, lo, hi, rho_of, label_of, label, k0, j0, i0, out, a, b):  # pragma: no cover - compiled
    """Slices ``out[a:b]`` of material ``label``'s density on the box of ``hu`` that starts at ``(k0, j0, i0)``:
    the table density where the voxel is that material, 0 elsewhere (as :func:`_material_table_range`)."""
    _, nj, ni = out.shape
    zero = np.float32(0.0)
    for k in range(a, b):
        for j in range(nj):
            for i in range(ni):
                v = np.float32(hu[k0 + k, j0 + j, i0 + i])
                if v < lo:
                    v = np.float32(lo)
                if v > hi:
                    v = np.float32(hi)
                idx = np.int64(v) - lo
                out[k, j, i] = rho_of[idx] if label_of[idx] == label else zero


def _integral_range(hu, a, b):  # pragma: no cover - runs compiled (numba)
    """Whether every float32 value of ``hu[a:b]`` is an integer (NaN is not)."""
    for n in range(a, b):
        v = np.float32(hu[n])
        if v != np.rint(v):
            return False
    return True


def _material_table_range(hu, lo, hi, rho_of, label_of, air, lung, soft, bone, a, b):  # pragma: no cover - compiled
    """The table path of :func:`material_densities` for ``hu[a:b]`` (flat arrays): ``idx = clip(hu, lo, hi) − lo``,
    the density ``rho_of[idx]`` in the channel ``label_of[idx]`` and 0 in the others."""
    for n in range(a, b):
        v = np.float32(hu[n])
        if v < lo:
            v = np.float32(lo)
        if v > hi:
            v = np.float32(hi)
        idx = np.int64(v) - lo
        rho, label = rho_of[idx], label_of[idx]
        zero = np.float32(0.0)
        air[n] = rho if label == 0 else zero
        lung[n] = rho if label == 1 else zero
        soft[n] = rho if label == 2 else zero
        bone[n] = rho if label == 3 else zero


def _as_voxels(hu) -> np.ndarray:
    """``hu`` as a C-contiguous array the compiled loops take (integers, float32, float64); others as float32."""
    hu = np.ascontiguousarray(hu)
    if not (hu.dtype.kind in "iu" or hu.dtype in (np.float32, np.float64)):  # bool, float16, …
        hu = hu.astype(np.float32)
    return hu


def _density_table(hu: np.ndarray) -> np.ndarray:
    """Schneider 2000 density (g/cm³, float32) at ``hu``."""
    return np.interp(hu, _SCHNEIDER_HU, _SCHNEIDER_RHO).astype(np.float32)
