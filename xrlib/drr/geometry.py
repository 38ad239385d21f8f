"""Cone-beam geometry of a PA chest radiograph, patient pose, and the pixel-to-ray mapping.

This docstring is the single place where frames, signs and pixel conventions are defined; the
tests in ``tests/test_geometry.py`` pin each statement with an analytic answer.

Frames
------
* **Patient frame** = the CT's physical frame, DICOM/ITK **LPS** in millimetres:
  +x towards the patient's *left*, +y *posterior*, +z *superior*.
* **Room frame**: the frame in which source and detector are fixed. It coincides with the patient
  frame when the patient is in the reference pose (α = tilt = 0, no shift).
* **Isocenter** ``c``: a point of the patient frame, by default the centre of the CT grid
  (:attr:`xrlib.core.ct.Volume.center`). Rotations of the patient are about axes through ``c``.

Source and detector (room frame, PA projection)
-----------------------------------------------
* X-ray source ``S = c + (0, +SID, 0)``: behind the patient (posterior), SID = source-to-isocenter
  distance (paper: 1500 mm).
* Flat detector in front of the patient (anterior), perpendicular to the central ray, centred at
  ``D = c + (0, SID − SDD, 0)``; SDD = source-to-detector distance (paper: 1800 mm, i.e. the
  detector is 300 mm anterior to the isocenter).
* Detector axes: column index increases along ``e_u = +x`` (towards the patient's left), row index
  increases along ``e_v = −z`` (towards the feet). Hence the **display convention**: row 0 is
  superior and column 0 is on the patient's *right*, as a PA chest radiograph is read.
* Pixel ``(row r, column c)`` of an ``H × W`` detector with pitch ``p`` (mm) has its centre at
  ``D + ((c + ½) − W/2)·p·e_u + ((r + ½) − H/2)·p·e_v``. Continuous pixel coordinates used by
  :func:`project_points` put integer values at pixel centres.
* Magnification at the isocenter is ``SDD / SID`` (1.2 for the paper's geometry), so a detector
  pixel of pitch ``p`` spans ``p · SID / SDD`` mm at the isocenter (:attr:`Geometry.pitch_iso`).

Pose (patient motion in the room)
---------------------------------
A pose maps a patient point ``x`` to the room point ``R (x − c) + c + t`` with
``R = R_z(α) · R_x(tilt)``, right-handed rotations in degrees:

* **α** rotates the patient about the superior–inferior axis (+z) through ``c``. α > 0 turns the
  patient's left side posterior (towards the source) and the right side anterior (towards the
  detector), i.e. a right-anterior-oblique-like rotation. In the image, structures posterior of
  the isocenter (the spine) move towards image left and anterior ones (the sternum) towards image
  right for α > 0.
* **tilt** rotates about the left–right axis (+x): tilt > 0 moves the head anterior (towards the
  detector), i.e. the patient leans forward.
* **shift** ``t`` translates the patient in the room (mm, LPS).

Rendering a posed patient is done by moving the source and detector with the inverse pose into the
patient frame (:func:`rays_in_patient_frame`); the CT is never resampled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Cone-beam PA geometry (defaults: the paper's clinical chest setup).

    Attributes:
        sid: source-to-isocenter distance in mm.
        sdd: source-to-detector distance in mm (must exceed ``sid``).
        height, width: detector size in pixels (rows, columns).
        pitch: detector pixel pitch in mm (square pixels).
    """

    sid: float = 1500.0
    sdd: float = 1800.0
    height: int = 1800
    width: int = 1800
    pitch: float = 0.24

    def __post_init__(self) -> None:
        if not (self.sid > 0 and self.sdd > self.sid):
            raise ValueError(f"need 0 < sid < sdd, got sid={self.sid} mm, sdd={self.sdd} mm")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"detector size must be positive, got {self.height}×{self.width}")
        if not self.pitch > 0:
            raise ValueError(f"detector pitch must be positive, got {self.pitch} mm")

    @property
    def magnification(self) -> float:
        """Geometric magnification of a point at the isocenter (SDD/SID)."""
        return self.sdd / self.sid

    @property
    def pitch_iso(self) -> float:
        """Size of one detector pixel projected back to the isocenter plane (mm)."""
        return self.pitch / self.magnification

    @classmethod
    def from_render(cls, render) -> "Geometry":
        """The study's square detector of a profile's ``render`` section (a
        :class:`xrlib.core.profiles.RenderSection`): ``render.detector`` px over ``render.field_mm`` mm,
        at the default (paper PA) distances."""
        n = int(render.detector)
        return cls(height=n, width=n, pitch=float(render.field_mm) / n)

    def resized(self, height: int, width: int | None = None) -> "Geometry":
        """Same physical detector area sampled with ``height × width`` pixels."""
        width = height if width is None else width
        return Geometry(self.sid, self.sdd, height, width, self.pitch * self.height / height)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Pose:
    """Patient pose: rotation α (deg) about the SI axis, tilt (deg) about the LR axis, shift (mm, LPS)."""

    alpha: float = 0.0
    tilt: float = 0.0
    shift: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    def to_dict(self) -> dict:
        return {"alpha": float(self.alpha), "tilt": float(self.tilt), "shift": [float(s) for s in self.shift]}


def rotation_matrix(pose: Pose) -> np.ndarray:
    """``R = R_z(α) · R_x(tilt)`` (3×3, right-handed, angles in degrees)."""
    a, t = np.deg2rad(pose.alpha), np.deg2rad(pose.tilt)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])
    return rz @ rx


def pose_matrix(pose: Pose, isocenter: np.ndarray) -> np.ndarray:
    """4×4 affine from the patient frame to the room frame for ``pose``."""
    c = np.asarray(isocenter, float)
    r = rotation_matrix(pose)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(pose.shift, float)
    return m


@dataclass(frozen=True)
class Rays:
    """Source, detector centre and detector axes of one pose, expressed in the patient frame (mm).

    ``e_u`` points along increasing column index, ``e_v`` along increasing row index and ``e_w``
    from the source towards the detector; all three are unit vectors.
    """

    source: np.ndarray
    detector: np.ndarray
    e_u: np.ndarray
    e_v: np.ndarray
    geometry: Geometry

    @property
    def e_w(self) -> np.ndarray:
        w = self.detector - self.source
        return w / np.linalg.norm(w)

    def pixel_centers(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Patient-frame positions of detector pixel centres, shape ``(len(rows), W, 3)``."""
        g = self.geometry
        r = np.arange(g.height) if rows is None else np.asarray(rows)
        du = (np.arange(g.width) + 0.5 - g.width / 2.0) * g.pitch
        dv = (r + 0.5 - g.height / 2.0) * g.pitch
        return self.detector + dv[:, None, None] * self.e_v + du[None, :, None] * self.e_u

    def camera_to_patient(self) -> np.ndarray:
        """4×4 affine whose columns are ``e_u, e_v, e_w`` and the source position.

        In this camera frame the source is at the origin and pixel ``(r, c)`` lies at
        ``((c + ½ − W/2)·p, (r + ½ − H/2)·p, SDD)``: the pinhole model used by nanodrr.
        """
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = self.e_u, self.e_v, self.e_w, self.source
        return m


def rays_in_patient_frame(geometry: Geometry, pose: Pose, isocenter: np.ndarray) -> Rays:
    """Source and detector of ``geometry`` seen from the patient frame when the patient is at ``pose``."""
    c = np.asarray(isocenter, float)
    inv = np.linalg.inv(pose_matrix(pose, c))
    to_patient = lambda p: inv[:3, :3] @ p + inv[:3, 3]  # noqa: E731 - point transform
    src = to_patient(c + np.array([0.0, geometry.sid, 0.0]))
    det = to_patient(c + np.array([0.0, geometry.sid - geometry.sdd, 0.0]))
    e_u = inv[:3, :3] @ np.array([1.0, 0.0, 0.0])
    e_v = inv[:3, :3] @ np.array([0.0, 0.0, -1.0])
    return Rays(src, det, e_u, e_v, geometry)


def rays_torch(geometry: Geometry, alpha, tilt, shift, isocenter):
    """Batched, differentiable :func:`rays_in_patient_frame` in torch.

    ``alpha``, ``tilt`` (deg) are tensors of shape ``(B,)`` and ``shift`` (mm, LPS) ``(B, 3)``; the
    isocenter is an array or tensor ``(3,)``. Returns ``(source, detector, e_u, e_v)``, each a
    ``(B, 3)`` tensor in the patient frame, in the dtype and on the device of ``alpha`` and with
    gradients w.r.t. the pose. The inverse pose is ``x ↦ Rᵀ (x − c − t) + c`` with
    ``R = R_z(α) · R_x(tilt)``, exactly as in the numpy version.
    """
    import torch

    a, t = torch.deg2rad(alpha), torch.deg2rad(tilt)
    ca, sa, ct, st = torch.cos(a), torch.sin(a), torch.cos(t), torch.sin(t)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rz = torch.stack([ca, -sa, zero, sa, ca, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, ct, -st, zero, st, ct], -1).reshape(-1, 3, 3)
    rt = (rz @ rx).transpose(1, 2)  # Rᵀ: room directions → patient frame
    c = torch.as_tensor(isocenter, dtype=a.dtype, device=a.device)
    room = torch.tensor([[0.0, geometry.sid, 0.0], [0.0, geometry.sid - geometry.sdd, 0.0],
                         [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype=a.dtype, device=a.device)
    points = room[:2][None] - shift.to(a.dtype)[:, None, :]  # source and detector relative to c + t
    src, det = (c + torch.einsum("bij,bpj->bpi", rt, points)).unbind(1)
    e_u, e_v = torch.einsum("bij,pj->bpi", rt, room[2:]).unbind(1)
    return src, det, e_u, e_v


def project_points(geometry: Geometry, pose: Pose, isocenter: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pinhole projection of patient-frame points (mm, shape ``(N, 3)``) to ``(row, col)``.

    Returned coordinates are continuous pixel indices (integers at pixel centres), shape ``(N, 2)``.
    """
    rays = rays_in_patient_frame(geometry, pose, isocenter)
    d = np.atleast_2d(np.asarray(points, float)) - rays.source
    depth = d @ rays.e_w  # distance along the central ray
    scale = geometry.sdd / depth
    u = (d @ rays.e_u) * scale
    v = (d @ rays.e_v) * scale
    col = u / geometry.pitch + geometry.width / 2.0 - 0.5
    row = v / geometry.pitch + geometry.height / 2.0 - 0.5
    return np.stack([row, col], axis=-1)


def complete_ray_field(
    rays: Rays, index_to_world: np.ndarray, shape_ijk: tuple[int, int, int], si_axis: int | None = None
) -> np.ndarray:
    """Detector pixels whose rays see the whole patient column that the CT covers.

    A CT with a tight field of view ends at a superior (and inferior) face that cuts through the
    body. Rays that cross such a face carry only part of the attenuation they would have in a real
    radiograph, which shows as an artificial edge. This returns a boolean ``(H, W)`` field that is
    ``False`` for rays that enter or leave the grid's side prism (the grid extended to infinity
    along the superior–inferior index axis) above the top face or below the bottom face, and
    ``True`` otherwise (including rays that miss the prism entirely: they pass beside the body).

    ``si_axis`` is the index axis (0=i, 1=j, 2=k) closest to the patient's +z; by default it is
    derived from the direction matrix.
    """
    a = np.asarray(index_to_world, float)
    world_to_index = np.linalg.inv(a)
    if si_axis is None:
        si_axis = int(np.argmax(np.abs(a[:3, :3][2, :] / np.linalg.norm(a[:3, :3], axis=0))))
    g = rays.geometry
    pix = rays.pixel_centers().reshape(-1, 3)
    src = world_to_index[:3, :3] @ rays.source + world_to_index[:3, 3]
    tgt = pix @ world_to_index[:3, :3].T + world_to_index[:3, 3]
    d = tgt - src
    lo = -0.5
    hi = np.asarray(shape_ijk, float) - 0.5
    t_in = np.zeros(len(d))
    t_out = np.ones(len(d))
    with np.errstate(divide="ignore", invalid="ignore"):
        for ax in range(3):
            if ax == si_axis:
                continue
            ta = (lo - src[ax]) / d[:, ax]
            tb = (hi[ax] - src[ax]) / d[:, ax]
            parallel = np.abs(d[:, ax]) < 1e-12
            inside = (src[ax] >= lo) & (src[ax] <= hi[ax])
            ta = np.where(parallel, np.where(inside, -np.inf, np.inf), ta)
            tb = np.where(parallel, np.inf, tb)
            t_in = np.maximum(t_in, np.minimum(ta, tb))
            t_out = np.minimum(t_out, np.maximum(ta, tb))
    hits = t_out > t_in
    s_in = src[si_axis] + t_in * d[:, si_axis]
    s_out = src[si_axis] + t_out * d[:, si_axis]
    within = (s_in >= lo) & (s_in <= hi[si_axis]) & (s_out >= lo) & (s_out <= hi[si_axis])
    return np.where(hits, within, True).reshape(g.height, g.width)
