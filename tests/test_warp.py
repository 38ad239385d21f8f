"""xrlib.anatomy.warp against SimpleITK's WarpImageFilter: the same voxels, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from xrlib.anatomy.warp import warp
from xrlib.core.ct import Volume


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    cz, sz = np.cos(np.radians(deg_z)), np.sin(np.radians(deg_z))
    cx, sx = np.cos(np.radians(deg_x)), np.sin(np.radians(deg_x))
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return rz @ rx


def _field(rng, grid: Volume, spacing: float, amplitude_mm: float, cover: float):
    """A random coarse field (identity direction, ``[z, y, x, 3]`` float64) over ``cover`` × the grid's
    world box: with ``cover < 1`` part of the grid lies outside the field (clamped nodes)."""
    corners = np.array([[a, b, c] for a in (0, grid.shape_ijk[0] - 1) for b in (0, grid.shape_ijk[1] - 1)
                        for c in (0, grid.shape_ijk[2] - 1)], float)
    m = grid.index_to_world
    world = corners @ m[:3, :3].T + m[:3, 3]
    lo, hi = world.min(0), world.max(0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * cover
    size = np.maximum(2, np.ceil(2 * half / spacing).astype(int) + 1)
    u = rng.normal(0.0, amplitude_mm, (*size[::-1], 3))
    img = sitk.GetImageFromArray(u, isVector=True)
    img.SetOrigin(tuple(centre - half))
    img.SetSpacing((spacing,) * 3)
    return img, sitk.GetArrayFromImage(img)


def _volume(rng, shape_kji, spacing, direction, dtype) -> Volume:
    if np.issubdtype(dtype, np.floating):
        arr = rng.normal(0.0, 300.0, shape_kji).astype(dtype)
    else:
        arr = rng.integers(0, 6, shape_kji).astype(dtype)
    return Volume(arr, spacing, (-20.0, 15.0, -30.0), np.asarray(direction, float), "random")


def _itk(src: Volume, field: sitk.Image, grid: Volume, linear: bool, fill: float) -> np.ndarray:
    img = src.to_sitk()
    if linear:
        img = sitk.Cast(img, sitk.sitkFloat32)
    out = sitk.Warp(img, field, sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, grid.shape_ijk,
                    grid.origin, grid.spacing, tuple(float(d) for d in np.asarray(grid.direction).ravel()), fill)
    return sitk.GetArrayFromImage(out)


GRIDS = {
    "axis-aligned": np.diag([1.0, -1.0, 1.0]),  # the example CT's LPS direction
    "identity": np.eye(3),
    "oblique": _rotation(25.0, 10.0),  # the general loop
}


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("linear,dtype", [(True, np.float32), (True, np.int16), (False, np.uint8), (False, np.int16)])
def test_warp_equals_sitk_warp(grid_name, linear, dtype):
    """Random volumes and fields; the field covers only part of the grid (clamped nodes) and pushes
    source points out of the volume (fill value): every voxel equals sitk.Warp's."""
    rng = np.random.default_rng(7)
    direction = GRIDS[grid_name]
    src = _volume(rng, (14, 21, 17), (1.7, 1.3, 2.5), direction, dtype)
    grid = Volume(np.zeros((12, 19, 23), np.float32), (1.3, 1.1, 2.1), (-22.0, 12.0, -28.0), direction, "grid")
    field, u = _field(rng, grid, 6.0, 2.5, cover=0.8)
    fill = -1000.0 if linear else 0
    ours = warp(src, field, u, grid, linear=linear, fill=fill, threads=2)
    ref = _itk(src, field, grid, linear, fill)
    assert ours.dtype == ref.dtype
    assert np.array_equal(ours, ref)
    assert (ours == fill).any() and (ours != fill).any()  # both outside and inside points were exercised


def test_nearest_rounds_half_up_like_itk():
    """A displacement of exactly half a voxel: ITK rounds the index half up; so must the warp."""
    src = Volume(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "ramp")
    grid = Volume(np.zeros((6, 7, 8), np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "grid")
    u = np.zeros((8, 9, 10, 3))
    u[..., 0], u[..., 1], u[..., 2] = 1.0, -1.0, 3.0  # +½, −½ and +1½ voxels
    field = sitk.GetImageFromArray(u, isVector=True)
    field.SetOrigin((-2.0, -2.0, -2.0))
    field.SetSpacing((2.0, 2.0, 2.0))
    ours = warp(src, field, sitk.GetArrayFromImage(field), grid, linear=False, fill=-1)
    ref = _itk(src, field, grid, False, -1)
    assert np.array_equal(ours, ref)
    # source index (i + ½, j − ½, k + 1½) → (i + 1, j, k + 2): half up, not half to even
    assert np.array_equal(ours[:4, :, :7], src.array[2:6, :, 1:8])
    assert (ours[4:] == -1).all() and (ours[:, :, 7] == -1).all()  # k + 1½ and i + ½ past the last voxel's half


def test_box_gives_the_whole_grid_values_and_zero_elsewhere():
    rng = np.random.default_rng(3)
    src = _volume(rng, (14, 21, 17), (1.7, 1.3, 2.5), np.eye(3), np.uint8)
    grid = Volume(np.zeros((12, 19, 23), np.float32), (1.3, 1.1, 2.1), (-22.0, 12.0, -28.0), np.eye(3), "grid")
    field, u = _field(rng, grid, 6.0, 2.0, cover=1.2)
    whole = warp(src, field, u, grid, linear=False, fill=0)
    lo, hi = np.array([3, 2, 4]), np.array([17, 11, 9])
    boxed = warp(src, field, u, grid, linear=False, fill=0, box=(lo, hi))
    inside = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    assert np.array_equal(boxed[inside], whole[inside])
    rest = boxed.copy()
    rest[inside] = 0
    assert not rest.any() and whole[inside].any()
    assert not warp(src, field, u, grid, linear=False, fill=0, box=(lo, lo)).any()  # an empty box


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(5)
    src = _volume(rng, (14, 21, 17), (1.7, 1.3, 2.5), GRIDS["axis-aligned"], np.float32)
    grid = Volume(np.zeros((12, 19, 23), np.float32), (1.3, 1.1, 2.1), (-22.0, 12.0, -28.0), GRIDS["axis-aligned"], "g")
    field, u = _field(rng, grid, 6.0, 2.0, cover=1.1)
    one = warp(src, field, u, grid, linear=True, fill=-1000.0, threads=1)
    assert np.array_equal(one, warp(src, field, u, grid, linear=True, fill=-1000.0, threads=5))


def test_field_values_must_match_the_field_image():
    rng = np.random.default_rng(0)
    src = _volume(rng, (4, 5, 6), (1.0, 1.0, 1.0), np.eye(3), np.float32)
    field, u = _field(rng, src, 2.0, 1.0, cover=1.0)
    with pytest.raises(ValueError, match=r"field_array shape .* does not match the field image"):
        warp(src, field, u[:-1], src, linear=True, fill=0.0)
