"""Analytic phantoms shared by the projector tests (CPU and CUDA)."""

import numpy as np

from xrlib.core.ct import Volume
from xrlib.drr.geometry import Geometry, Pose, rays_in_patient_frame


def centred_grid(n: int, spacing: float, direction=np.eye(3), offset=(0.0, 0.0, 0.0)) -> dict:
    """Grid kwargs whose centre sits at ``offset`` (mm)."""
    d = np.asarray(direction, float)
    origin = np.asarray(offset) - d @ (np.full(3, spacing) * (n - 1) / 2.0)
    return dict(spacing=(spacing,) * 3, origin=tuple(origin), direction=d)


def sphere_volume(radius: float, n: int, spacing: float, centre=(0.0, 0.0, 0.0)) -> Volume:
    """A unit-density sphere with partial-volume edges (≈ fraction of each voxel inside).

    The fraction is estimated on 3×3×3 sub-voxels, each with a linear ramp across the surface,
    which keeps the phantom's effective radius within a few µm of ``radius``.
    """
    kw = centred_grid(n, spacing)
    idx = (np.arange(n) - (n - 1) / 2.0) * spacing
    sub = spacing / 3.0
    arr = np.zeros((n, n, n), np.float32)
    for dz in (-sub, 0.0, sub):
        for dy in (-sub, 0.0, sub):
            for dx in (-sub, 0.0, sub):
                z, y, x = np.meshgrid(idx + dz - centre[2], idx + dy - centre[1], idx + dx - centre[0],
                                      indexing="ij", sparse=True)
                r = np.sqrt(x**2 + y**2 + z**2)
                arr += np.clip((radius - r) / sub + 0.5, 0.0, 1.0) / 27.0
    return Volume(arr, **kw)


def sphere_chords(geometry: Geometry, pose: Pose, centre, radius: float, isocenter=np.zeros(3)) -> np.ndarray:
    """Closed-form chord length (mm) of every detector ray through a sphere (H×W)."""
    rays = rays_in_patient_frame(geometry, pose, np.asarray(isocenter, float))
    d = rays.pixel_centers() - rays.source
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    w = np.asarray(centre, float) - rays.source
    dist2 = np.sum(w * w) - np.einsum("hwc,c->hw", d, w) ** 2
    return 2.0 * np.sqrt(np.clip(radius**2 - dist2, 0.0, None))
