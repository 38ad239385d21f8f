"""Deformation of one CT and its label map: sampled parameters, the displacement field, folding guard.

A virtual subject (see :mod:`xrlib.anatomy.cohort`) is a source CT deformed jointly with its label
map by a random but reproducible spatial transform:

1. **Global anisotropic scaling** (body habitus) about a centre that lies at the grid centre in LR
   and AP and at the level of the clavicles in SI (see :func:`scaling_centre`).
2. **Smooth random B-spline displacement**: a cubic B-spline on a coarse control grid whose
   node displacements are i.i.d. normal (posture, organ and soft-tissue shape variation).
3. **Shoulder girdle position**: for each side, a Gaussian-weighted translation centred on the
   lateral end of that clavicle (elevation/depression, protraction/retraction). Raising or
   advancing the shoulder rotates the clavicle about the sternoclavicular joint, so the lateral
   (acromial) end moves most and the medial end little; a Gaussian of width σ ≈ 50 mm centred on
   the lateral end reproduces that pattern without a rigid-body model.

Conventions
-----------
Coordinates are LPS millimetres (see :mod:`xrlib.core.ct`). SimpleITK resampling pulls values: for each
voxel centre ``x`` of the *output* (virtual subject) grid the transform gives the *source* point
``T(x)`` whose value is taken. This module builds

    ``T(x) = h(a(b(x)))``

* ``b(x) = x + f · B(x)``: the random B-spline displacement ``B`` (a :class:`SimpleITK.BSplineTransform`),
* ``a(y) = c + (y − c) / s``: the inverse of the global scaling by ``s = (scale_lr, scale_ap, scale_si)``
  about the scaling centre ``c`` — so ``scale_lr = 1.1`` makes the virtual subject 10 % *wider*.
  ``c`` is the grid centre in x and y; its z is the mean level of the clavicle labels (the grid
  centre's z if there are none). Scaling SI about the grid centre would shift the clavicles of a
  chest CT by up to ``(scale_si − 1) × 150 mm`` (±8 mm), pushing them out through, or pulling air
  in under, the superior face of a tight field of view such as the example's; about their own
  level they stay put and SI scaling only changes their thickness and the trunk length,
* ``h(z) = z − f · Σ_side d_side · exp(−|z − p_side|² / 2σ²)``, where ``p_side`` is the lateral end
  of that clavicle in the source. To first order the source point ``p_side`` appears at
  ``p_side + d_side`` (before scaling), so ``d = (dx, dy, dz)`` is the displacement of the shoulder
  in the virtual subject: ``dz > 0`` elevation, ``dz < 0`` depression, ``dy < 0`` protraction
  (anterior), ``dy > 0`` retraction (posterior), ``dx`` lateral (+x = towards the patient's left).

``f ≤ 1`` is the *non-rigid factor* of the folding guard (below); it is 1 unless the guard acts.

Efficiency
----------
``T`` is sampled once on a coarse, axis-aligned grid (``DeformationConfig.field_spacing_mm``, 4 mm: about
0.7 M nodes for the example CT instead of 35 M voxels) that covers the output grid with a margin,
and the CT (linear) and label map (nearest neighbour) are resampled through this field, which is
interpolated linearly between nodes: :func:`deformation_transform` returns it as a
:class:`SimpleITK.DisplacementFieldTransform`, and :func:`deform` applies the same field with
:func:`xrlib.anatomy.warp.warp`, which does :func:`SimpleITK.Warp`'s arithmetic in a compiled loop
(the same voxels, several times faster; ``sitk.Warp`` in turn gives voxel-for-voxel the result of
:func:`SimpleITK.Resample` with that transform). All parts of ``T`` are smooth on the scale of
centimetres, so the coarse field reproduces them to a small fraction of a millimetre; the affine part
is reproduced exactly. A dense float64 field for the example would need 0.8 GB; the coarse one needs
16 MB. The label map is warped only inside the output box its non-zero voxels can reach through the
field (:func:`xrlib.anatomy.warp.reach_box`; about half the example's grid), with the whole-grid warp's value in
every voxel of it.

No folding
----------
The Jacobian determinant of ``T`` is computed on the coarse field with
:func:`SimpleITK.DisplacementFieldJacobianDeterminant` (central finite differences). This is the
mapping actually applied (the resampler interpolates the same field). If its minimum is at or below
``DeformationConfig.jacobian_floor`` (0.2), the non-rigid part (B-spline and shoulder) is halved and the
field rebuilt, up to ``DeformationConfig.max_halvings`` times; the applied factor is recorded as
``nonrigid_factor`` in the stats. If even the scaling alone folds (never with positive scales), a
:class:`FoldingError` is raised. With the default bands the guard essentially never acts: the
shoulder term alone keeps the determinant above ≈ 0.85 and the B-spline gradients are a few
per cent.

Clavicle volume band
--------------------
After deformation each clavicle's volume must lie within ``DeformationConfig.clavicle_volume_band``
(default 0.75–1.30) times its source volume. Global scaling alone multiplies volume by
``scale_lr · scale_ap · scale_si`` (0.80–1.23 for the default bands); the rest of the band allows
for local B-spline volume change and for bone leaving or entering through the faces of a tight
field of view (the example CT cuts the clavicles at its superior face, so shoulder elevation
moves bone out of the volume and, with ``outside="continue_si"``, depression continues the cut
face). On the example, 12 of 12 default draws fell inside the band (ratios 0.77–1.21). Outside the band,
:func:`deform` raises :class:`ImplausibleDeformationError`; :func:`xrlib.anatomy.cohort.build_cohort` then draws new
parameters (next ``attempt``), so the cohort is a deterministic draw from the truncated
distribution and the manifest records the attempt.

Outside the source field of view
--------------------------------
Some output voxels map to source points outside the source grid (a body scaled down pulls content
in from beyond the faces; a shoulder moved down pulls it in from above). ``DeformationConfig.outside``
says what they get:

* ``"continue_si"`` (default): beyond the **superior and inferior** faces the boundary slice is
  continued (CT and labels alike, by edge replication); beyond the in-plane faces air (−1000 HU)
  and label 0. A chest CT always cuts the body at its superior and inferior faces, so air there
  would be wrong: with ``"air"`` a subject scaled by 0.95 in SI gets an air slab of ~16 mm at the
  inferior face of the example CT, a depressed shoulder pulls air in under the superior face
  around the clavicle, and the truncation is no longer the plane of the volume's face that the
  projection stage handles. Continuing the boundary slice keeps that plane (the
  clavicle mask is continued consistently with the CT). In-plane, the patient is surrounded by
  air, so air is right there.
* ``"air"``: air (−1000 HU) and label 0 everywhere outside.
* ``"edge"``: the boundary voxels are continued on all six faces.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from xrlib.core.ct import CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL, Volume
from xrlib.core.errors import InputError

#: Air in HU: the value of output voxels whose source point lies outside the source grid.
AIR_HU = -1000.0

_OUTSIDE_MODES = ("continue_si", "air", "edge")


class DeformationError(RuntimeError):
    """A deformation could not be made acceptable (see :class:`FoldingError`, :class:`ImplausibleDeformationError`).

    A domain error, not bad user input (so not an :class:`~xrlib.core.errors.InputError`): the
    parameters were drawn by the cohort, which redraws after :class:`ImplausibleDeformationError`
    and gives up with a :class:`DeformationError` after ``max_attempts``.
    """


class FoldingError(DeformationError):
    """The mapping folds (Jacobian determinant ≤ floor) even with the non-rigid part scaled down."""


class ImplausibleDeformationError(DeformationError):
    """A clavicle's volume after deformation lies outside the configured band."""


# --------------------------------------------------------------------------------------------
# Parameters and their sampling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeformationParams:
    """Everything that defines one virtual subject's deformation (all of it goes to the manifest).

    Scales are factors of the virtual subject's size relative to the source (1 = unchanged), about
    :func:`scaling_centre`. ``bspline_nodes`` is the number of B-spline control nodes along (LR, AP, SI)
    (at least 4 each: cubic B-splines); each node's displacement is drawn i.i.d. normal with std
    ``bspline_std_mm`` per axis from a generator seeded with ``seed`` (so the seed and these fields
    fully determine the field; ``bspline_std_mm = 0`` disables it). ``shoulder_*_mm`` are the LPS
    displacements ``(dx, dy, dz)`` of each shoulder (see the module docstring for signs), applied
    with a Gaussian weight of width ``shoulder_sigma_mm`` centred on that clavicle's lateral end.
    """

    seed: int
    scale_lr: float = 1.0
    scale_ap: float = 1.0
    scale_si: float = 1.0
    bspline_nodes: tuple[int, int, int] = (6, 6, 4)
    bspline_std_mm: float = 0.0
    shoulder_left_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shoulder_right_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shoulder_sigma_mm: float = 50.0

    def __post_init__(self):
        for name in ("scale_lr", "scale_ap", "scale_si"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InputError("DeformationParams", f"{name} must be a positive number, got {v!r}")
        nodes = tuple(int(n) for n in self.bspline_nodes)
        if len(nodes) != 3 or min(nodes) < 4:
            raise InputError("DeformationParams", f"bspline_nodes must be 3 integers ≥ 4 (cubic B-spline), got {self.bspline_nodes!r}")
        if not (math.isfinite(self.bspline_std_mm) and self.bspline_std_mm >= 0):
            raise InputError("DeformationParams", f"bspline_std_mm must be ≥ 0, got {self.bspline_std_mm!r}")
        if not (math.isfinite(self.shoulder_sigma_mm) and self.shoulder_sigma_mm > 0):
            raise InputError("DeformationParams", f"shoulder_sigma_mm must be > 0, got {self.shoulder_sigma_mm!r}")
        for name in ("shoulder_left_mm", "shoulder_right_mm"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise InputError("DeformationParams", f"{name} must be 3 finite numbers (dx, dy, dz), got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "bspline_nodes", nodes)
        object.__setattr__(self, "seed", int(self.seed))

    def to_dict(self) -> dict:
        """Flat ``{column: scalar}`` for the manifest CSV (tuples are split into one column per axis)."""
        d = {
            "seed": self.seed,
            "scale_lr": self.scale_lr,
            "scale_ap": self.scale_ap,
            "scale_si": self.scale_si,
            "bspline_nodes_lr": self.bspline_nodes[0],
            "bspline_nodes_ap": self.bspline_nodes[1],
            "bspline_nodes_si": self.bspline_nodes[2],
            "bspline_std_mm": self.bspline_std_mm,
        }
        for side in ("left", "right"):
            for axis, v in zip("xyz", getattr(self, f"shoulder_{side}_mm")):
                d[f"shoulder_{side}_d{axis}_mm"] = v
        d["shoulder_sigma_mm"] = self.shoulder_sigma_mm
        return d

    @classmethod
    def from_dict(cls, d) -> "DeformationParams":
        """Inverse of :meth:`to_dict` (accepts a manifest row; extra keys are ignored)."""
        return cls(
            seed=int(d["seed"]),
            scale_lr=float(d["scale_lr"]),
            scale_ap=float(d["scale_ap"]),
            scale_si=float(d["scale_si"]),
            bspline_nodes=tuple(int(d[f"bspline_nodes_{a}"]) for a in ("lr", "ap", "si")),
            bspline_std_mm=float(d["bspline_std_mm"]),
            shoulder_left_mm=tuple(float(d[f"shoulder_left_d{a}_mm"]) for a in "xyz"),
            shoulder_right_mm=tuple(float(d[f"shoulder_right_d{a}_mm"]) for a in "xyz"),
            shoulder_sigma_mm=float(d["shoulder_sigma_mm"]),
        )

    @classmethod
    def identity(cls, seed: int = 0) -> "DeformationParams":
        """Parameters that leave the CT unchanged (scales 1, all displacements 0)."""
        return cls(seed=seed)


@dataclass
class DeformationConfig:
    """Sampling bands and processing settings of the deformations (the per-subject part of a cohort's settings).

    Default bands (all uniform, independent, left and right shoulders independent):

    * ``scale_lr_band = scale_ap_band = 0.08`` (±8 %, sd 4.6 %) and ``scale_si_band = 0.05``
      (±5 %, sd 2.9 %): between adults of one sex, chest breadth and depth vary with a coefficient
      of variation of roughly 6–8 % and trunk (sitting) height of roughly 3–4 % in anthropometric
      surveys. The bands cover a good part of that range while keeping the deformed body inside
      the field of view and the shape plausible for one source's ribs and lungs; a uniform band
      also makes the extremes as likely as the centre, which is what a robustness study wants.
    * ``bspline_std_mm = 6`` on ``6×6×4`` control nodes (node spacing ≈ 12 cm in-plane and 35 cm
      SI for the example CT): smooth posture and soft-tissue variation. On the example the
      interpolated field has an rms of ≈ 2 mm per axis (≈ 3.5 mm in magnitude, maxima ≈ 7 mm) and
      changes local volume by less than ±9 %, so bones are moved, not visibly distorted.
    * shoulders ``±8 mm`` SI (elevation/depression) and ``±8 mm`` AP (protraction/retraction),
      ``±4 mm`` LR, σ = 50 mm: a design choice for the variation of shoulder position between
      well-positioned PA chest radiographs (hands on hips, shoulders rolled forward and relaxed),
      of the order of a centimetre at the acromial end; larger movements are *positioning*
      errors, which the projection stage models separately (pose α, tilt, shift).

    Processing: ``field_spacing_mm`` (coarse displacement grid), ``jacobian_floor`` and
    ``max_halvings`` (folding guard), ``clavicle_volume_band`` (plausibility check),
    ``max_attempts`` (redraws per subject when the check fails), ``outside`` ("continue_si", "air"
    or "edge", see the module docstring), ``clavicle_labels`` (left, right).
    """

    scale_lr_band: float = 0.08
    scale_ap_band: float = 0.08
    scale_si_band: float = 0.05
    bspline_nodes: tuple[int, int, int] = (6, 6, 4)
    bspline_std_mm: float = 6.0
    shoulder_si_mm: float = 8.0
    shoulder_ap_mm: float = 8.0
    shoulder_lr_mm: float = 4.0
    shoulder_sigma_mm: float = 50.0
    field_spacing_mm: float = 4.0
    jacobian_floor: float = 0.2
    max_halvings: int = 6
    clavicle_volume_band: tuple[float, float] = (0.75, 1.30)
    max_attempts: int = 10
    outside: str = "continue_si"
    clavicle_labels: tuple[int, int] = (CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL)

    def __post_init__(self):
        for name in ("scale_lr_band", "scale_ap_band", "scale_si_band"):
            v = getattr(self, name)
            if not (0 <= v < 1):
                raise InputError(type(self).__name__, f"{name} must be in [0, 1), got {v!r}")
        if self.outside not in _OUTSIDE_MODES:
            raise InputError(type(self).__name__, f"outside must be one of {', '.join(map(repr, _OUTSIDE_MODES))}, got {self.outside!r}")
        if not self.field_spacing_mm > 0:
            raise InputError(type(self).__name__, f"field_spacing_mm must be > 0, got {self.field_spacing_mm!r}")
        lo, hi = self.clavicle_volume_band
        if not (0 < lo <= 1 <= hi):
            raise InputError(type(self).__name__, f"clavicle_volume_band must satisfy 0 < low ≤ 1 ≤ high, got {self.clavicle_volume_band!r}")
        if int(self.max_attempts) < 1:
            raise InputError(type(self).__name__, f"max_attempts must be ≥ 1, got {self.max_attempts!r}")
        self.bspline_nodes = tuple(int(n) for n in self.bspline_nodes)
        self.clavicle_volume_band = (float(lo), float(hi))
        self.clavicle_labels = tuple(int(v) for v in self.clavicle_labels)


def sample_params(seed: int, config: DeformationConfig | None = None) -> DeformationParams:
    """Draw one subject's parameters from ``config``'s bands with ``numpy.random.default_rng(seed)``."""
    config = config or DeformationConfig()
    rng = np.random.default_rng(int(seed))
    s_lr, s_ap, s_si = (
        float(1.0 + rng.uniform(-b, b)) for b in (config.scale_lr_band, config.scale_ap_band, config.scale_si_band)
    )
    band = np.array([config.shoulder_lr_mm, config.shoulder_ap_mm, config.shoulder_si_mm], float)
    left = tuple(float(v) for v in rng.uniform(-band, band))
    right = tuple(float(v) for v in rng.uniform(-band, band))
    return DeformationParams(
        seed=int(seed),
        scale_lr=s_lr,
        scale_ap=s_ap,
        scale_si=s_si,
        bspline_nodes=config.bspline_nodes,
        bspline_std_mm=float(config.bspline_std_mm),
        shoulder_left_mm=left,
        shoulder_right_mm=right,
        shoulder_sigma_mm=float(config.shoulder_sigma_mm),
    )


def subject_seed(base_seed: int, source_name: str, index: int, attempt: int = 0) -> int:
    """Deterministic per-subject seed from (cohort seed, source name, subject index, attempt)."""
    name_key = int.from_bytes(hashlib.sha256(source_name.encode()).digest()[:8], "little")
    ss = np.random.SeedSequence([int(base_seed), name_key, int(index), int(attempt)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))  # < 2**63: fits a CSV int64


# --------------------------------------------------------------------------------------------
# The deformation
# --------------------------------------------------------------------------------------------


def _world_corners(vol: Volume) -> np.ndarray:
    n = np.asarray(vol.shape_ijk, float) - 1.0
    idx = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], float)
    m = vol.index_to_world
    return idx @ m[:3, :3].T + m[:3, 3]


def _field_grid(vol: Volume, spacing_mm: float) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Size and origin of an axis-aligned grid covering every voxel centre of ``vol`` with 2 nodes to spare."""
    corners = _world_corners(vol)
    lo = corners.min(0) - 2 * spacing_mm
    hi = corners.max(0) + 2 * spacing_mm
    size = tuple(int(math.ceil((h - l) / spacing_mm)) + 1 for l, h in zip(lo, hi))
    return size, tuple(float(v) for v in lo)


def _grid_points(size, origin, spacing) -> np.ndarray:
    """World coordinates of an identity-direction grid as an array [k, j, i, 3] (x, y, z)."""
    axes = [origin[d] + spacing * np.arange(size[d]) for d in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([x, y, z], axis=-1)


def _bspline(params: DeformationParams, size, origin, spacing) -> sitk.BSplineTransform:
    """The random B-spline transform, on a domain one field node larger than the field grid."""
    tx = sitk.BSplineTransform(3, 3)
    dom_origin = [o - spacing for o in origin]
    dom_size = [(n + 1) * spacing for n in size]
    tx.SetTransformDomainOrigin(dom_origin)
    tx.SetTransformDomainPhysicalDimensions(dom_size)
    tx.SetTransformDomainDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    tx.SetTransformDomainMeshSize([n - 3 for n in params.bspline_nodes])
    n_par = tx.GetNumberOfParameters()
    # An independent stream of the subject's seed, so that the coefficient draw does not depend on
    # how many numbers sample_params consumed.
    rng = np.random.default_rng([params.seed, 0xB5])
    coeff = rng.standard_normal(n_par) * params.bspline_std_mm
    tx.SetParameters(tuple(float(c) for c in coeff))
    return tx


def _continued(vol: Volume, axes: list[int], u: np.ndarray) -> Volume:
    """``vol`` padded along index ``axes`` by replicating its boundary voxels.

    The padding is wide enough for every source point of the displacement field ``u``: the
    source index of an output voxel is its own index plus ``M u`` with ``M = (direction · diag(spacing))⁻¹``.
    """
    if not axes:
        return vol
    m = np.linalg.inv(np.asarray(vol.direction, float) @ np.diag(vol.spacing))
    reach = np.abs(u.reshape(-1, 3) @ m.T).max(0)  # largest index displacement per axis (i, j, k)
    pad = [int(math.ceil(reach[a])) + 2 if a in axes else 0 for a in range(3)]
    arr = np.pad(vol.array, [(pad[2], pad[2]), (pad[1], pad[1]), (pad[0], pad[0])], mode="edge")
    origin = np.asarray(vol.origin, float) - np.asarray(vol.direction, float) @ (np.asarray(vol.spacing) * pad)
    return Volume(arr, vol.spacing, tuple(origin), vol.direction, vol.source)


def _clavicle_points(labels: Volume, clavicle_labels) -> dict:
    """LPS positions (mm) of the voxels of each clavicle label, ``None`` where absent."""
    pts = {}
    m = labels.index_to_world
    for side, lab in zip(("left", "right"), clavicle_labels):
        kji = np.argwhere(labels.array == lab)
        pts[side] = None if len(kji) == 0 else kji[:, ::-1].astype(float) @ m[:3, :3].T + m[:3, 3]
    return pts


def shoulder_centres(labels: Volume, clavicle_labels=(CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL), _pts=None) -> dict:
    """Lateral end of each clavicle label (LPS mm), or ``None`` for a label that is absent.

    The lateral end is the centroid of the label's voxels in the most lateral quarter of its
    left–right extent (lateral = away from the midline between the two clavicles, or from the grid
    centre if only one is present).
    """
    pts = _clavicle_points(labels, clavicle_labels) if _pts is None else _pts
    present = [p for p in pts.values() if p is not None]
    midline = float(np.mean([p[:, 0].mean() for p in present])) if len(present) == 2 else float(labels.center[0])
    out = {}
    for side, p in pts.items():
        if p is None:
            out[side] = None
            continue
        lateral = np.abs(p[:, 0] - midline)
        lo, hi = lateral.min(), lateral.max()
        sel = lateral >= hi - 0.25 * (hi - lo)
        out[side] = p[sel].mean(0)
    return out


def scaling_centre(labels: Volume, clavicle_labels=(CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL), _pts=None) -> np.ndarray:
    """Centre of the global scaling (LPS mm): grid centre in x, y; mean clavicle level in z.

    Falls back to the grid centre's z when neither clavicle label is present.
    """
    pts = _clavicle_points(labels, clavicle_labels) if _pts is None else _pts
    c = np.asarray(labels.center, float).copy()
    present = [p for p in pts.values() if p is not None]
    if present:
        c[2] = float(np.concatenate([p[:, 2] for p in present]).mean())
    return c


def _field(c: np.ndarray, params: DeformationParams, u_b: np.ndarray, pts: np.ndarray, centres: dict, factor: float) -> np.ndarray:
    """Displacement ``T(x) − x`` at the field nodes ``pts`` (scaling centre ``c``, non-rigid factor ``factor``)."""
    s = np.array([params.scale_lr, params.scale_ap, params.scale_si], float)
    y = pts + factor * u_b  # b(x)
    y = c + (y - c) / s  # a(y)
    shift = np.zeros_like(y)
    for side in ("left", "right"):
        p = centres.get(side)
        d = np.asarray(getattr(params, f"shoulder_{side}_mm"), float)
        if p is None or not d.any():
            continue
        r2 = ((y - p) ** 2).sum(-1, keepdims=True)
        shift += d * np.exp(-r2 / (2.0 * params.shoulder_sigma_mm**2))
    y = y - factor * shift  # h(z)
    return y - pts


def _vector_image(u: np.ndarray, size, origin, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(u, dtype=np.float64), isVector=True)
    img.SetOrigin(origin)
    img.SetSpacing((spacing,) * 3)
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    return img


def _displacement_field(ct: Volume, labels: Volume, params: DeformationParams, config: DeformationConfig):
    """(field image, stats) with the folding guard applied; see the module docstring."""
    h = float(config.field_spacing_mm)
    size, origin = _field_grid(ct, h)
    pts = _grid_points(size, origin, h)
    if params.bspline_std_mm > 0:
        bs = _bspline(params, size, origin, h)
        u_b = sitk.GetArrayFromImage(
            sitk.TransformToDisplacementField(bs, sitk.sitkVectorFloat64, size, origin, (h,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
        )
    else:
        u_b = np.zeros_like(pts)
    clav = _clavicle_points(labels, config.clavicle_labels)
    centres = shoulder_centres(labels, config.clavicle_labels, _pts=clav)
    c = scaling_centre(labels, config.clavicle_labels, _pts=clav)
    factor = 1.0
    for _ in range(config.max_halvings + 1):
        u = _field(c, params, u_b, pts, centres, factor)
        img = _vector_image(u, size, origin, h)
        # Central differences are valid on interior nodes only; the outer node layer lies outside
        # the CT grid (the field has a 2-node margin), so the interior covers every voxel.
        jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(img, True))[1:-1, 1:-1, 1:-1]
        jmin, jmax = float(jac.min()), float(jac.max())
        if jmin > config.jacobian_floor:
            break
        factor *= 0.5
    else:
        raise FoldingError(
            f"seed {params.seed}: minimum Jacobian determinant {jmin:.3g} ≤ {config.jacobian_floor} "
            f"even with the non-rigid displacement scaled by {factor * 2:g} (scales {params.scale_lr:g}, "
            f"{params.scale_ap:g}, {params.scale_si:g})"
        )
    nonrigid = u - _field(c, params, u_b, pts, centres, 0.0)
    stats = {
        "min_jacobian": jmin,
        "max_jacobian": jmax,
        "nonrigid_factor": factor,
        "max_nonrigid_displacement_mm": float(np.sqrt((nonrigid**2).sum(-1)).max()),
        "scale_centre_x_mm": float(c[0]),
        "scale_centre_y_mm": float(c[1]),
        "scale_centre_z_mm": float(c[2]),
        "shoulder_left_applied": centres["left"] is not None,
        "shoulder_right_applied": centres["right"] is not None,
    }
    return img, u, stats


def deformation_transform(
    ct: Volume, labels: Volume, params: DeformationParams, config: DeformationConfig | None = None
) -> tuple[sitk.DisplacementFieldTransform, dict]:
    """The output→source transform ``T`` of :func:`deform` (a coarse displacement field) and its stats.

    The labels are needed to locate the shoulders. The folding guard is applied.
    """
    config = config or DeformationConfig()
    img, _, stats = _displacement_field(ct, labels, params, config)
    return sitk.DisplacementFieldTransform(img), stats


def _clavicle_ml(labels: np.ndarray, label: int, voxel_ml: float) -> float:
    return float(np.count_nonzero(labels == label)) * voxel_ml


def deform(
    ct: Volume,
    labels: Volume,
    params: DeformationParams,
    config: DeformationConfig | None = None,
    check: bool = True,
) -> tuple[Volume, Volume, dict]:
    """Deform a CT (linear interpolation) and its label map (nearest neighbour) jointly.

    Both are resampled on the **original grid** (same size, spacing, origin and direction), so
    downstream code is unchanged. Returns ``(ct, labels, stats)``; ``stats`` holds the minimum and
    maximum Jacobian determinant of the applied mapping, the applied ``nonrigid_factor``, each
    clavicle's volume in ml before and after and their ratio, and the time taken.

    Raises :class:`FoldingError` if folding cannot be removed, and (with ``check=True``)
    :class:`ImplausibleDeformationError` if a clavicle's volume ratio leaves
    ``config.clavicle_volume_band``; with ``check=False`` the result is returned and
    ``stats["clavicle_volume_ok"]`` says whether the check passed.

    A virtual subject is a deformed copy of its source, **not an independent patient**.
    """
    config = config or DeformationConfig()
    if not ct.same_grid(labels):
        raise InputError(labels.source, f"label map is on a different grid than the CT {ct.source}")
    t0 = time.perf_counter()
    field_img, u, stats = _displacement_field(ct, labels, params, config)

    axes = {"air": [], "edge": [0, 1, 2], "continue_si": [ct.si_axis]}[config.outside]
    src_ct, src_lab = (_continued(v, axes, u) for v in (ct, labels))
    from xrlib.anatomy.warp import reach_box, warp  # imports numba: only where subjects are built

    new_ct = ct.with_array(warp(src_ct, field_img, u, ct, linear=True, fill=AIR_HU),
                           source=f"{ct.source} [virtual seed {params.seed}]")  # float32 HU
    box = reach_box(field_img, u, src_lab, ct)  # None: no label at all
    warped_lab = np.zeros_like(labels.array) if box is None else warp(src_lab, field_img, u, ct, linear=False, fill=0, box=box)
    new_lab = labels.with_array(warped_lab, source=f"{labels.source} [virtual seed {params.seed}]")

    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    lo, hi = config.clavicle_volume_band
    ok = True
    for side, lab in zip(("left", "right"), config.clavicle_labels):
        before = _clavicle_ml(labels.array, lab, voxel_ml)
        after = _clavicle_ml(new_lab.array, lab, voxel_ml)
        ratio = after / before if before > 0 else float("nan")
        stats[f"clavicle_{side}_ml_before"] = before
        stats[f"clavicle_{side}_ml_after"] = after
        stats[f"clavicle_{side}_volume_ratio"] = ratio
        if before > 0 and not (lo <= ratio <= hi):
            ok = False
    stats["clavicle_volume_ok"] = ok
    stats["seconds"] = time.perf_counter() - t0
    if check and not ok:
        raise ImplausibleDeformationError(
            f"seed {params.seed}: clavicle volume ratio left "
            f"{stats['clavicle_left_volume_ratio']:.3f}, right {stats['clavicle_right_volume_ratio']:.3f} "
            f"outside the band [{lo:g}, {hi:g}]"
        )
    return new_ct, new_lab, stats
