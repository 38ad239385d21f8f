"""Radiographs and clavicle masks rendered from a CT: geometry × pose × physics × backend.

:func:`render_batch` turns a CT (HU) and optional clavicle masks into one :class:`Radiograph` per
pose. The CT is converted to the channels the physics level needs (μ for ``naive`` and
``heuristic``; four material densities for ``realistic``), every channel is forward-projected
once for all poses, and the clavicle masks are projected with the same geometry and binarized by
path length (default ≥ 0.5 mm).

Tight CT fields of view
-----------------------
A CT that ends inside the body (the example CT starts at the lung apices, and its clavicles run
up to the top slice) produces rays that cross the superior or inferior face of the volume. They
see only part of the anatomy, which shows as an artificial horizontal edge. Three modes:

``fov="pad"`` (default)
    The CT is extended superiorly by ``pad_mm`` of *bone-free soft tissue*: every slice of the
    pad copies the body outline of the top slice (HU > −500) filled with 40 HU (muscle/soft
    tissue), air elsewhere; the label map is padded with background. Rays through the band above
    the cut then see a plausible amount of tissue, the clavicles stay visible up to the cut plane
    and their projected masks are cut at the same plane. Rays that still cross the (new) superior
    or the inferior face are collimated as in ``collimate``.
``fov="collimate"``
    Detector pixels whose rays cross the superior or inferior face are treated as collimated:
    image and masks are 0 there. Honest but costly for the example CT, whose clavicles rise
    laterally above the top slice: most of their lateral parts fall outside the field.
``fov="none"``
    The raw partial ray sums, for comparison.

In every mode ``Radiograph.field`` marks the valid area; image and masks are zero outside it, so
they are always cut at the same place. CTs with full neck and shoulder coverage are barely affected.

Detector prefilter
------------------
A detector pixel integrates the fluence over its area, while a ray-driven projector samples one
ray per pixel. Where a pixel spans several CT voxels, that point sample aliases the CT's finer
detail. With ``prefilter=True`` (a profile's ``render.prefilter``; off by default) the physics
channels are projected as :func:`detector_prefilter` leaves them: averaged over blocks of
``⌊pitch at the isocenter / voxel spacing⌋`` voxels per index axis (a box filter of about one
pixel, :func:`xrlib.core.ct.block_mean`), which preserves every line integral and, along the rays,
cuts the slices each ray crosses by the same factor. At the quick detector (1.41 mm per pixel at
the isocenter) the example CT (0.70 × 0.70 × 2.5 mm) is averaged over 2 × 2 voxels in-plane; at
the paper's detector (0.20 mm) every factor is 1 and nothing changes. The clavicle masks are
projected at full resolution: they are the labels. It is off by default because it moves the quick
study's Dice by more than the seed-to-seed spread (see the book's Architecture page).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from xrlib.drr import materials as mat
from xrlib.drr import physics as phys
from xrlib.core.ct import ClavicleMasks, Volume, block_mean, crop_to_support
from xrlib.core.profiles import FOV_MODES, PHYSICS_CHAINS
from xrlib.core.runs import versions
from xrlib.drr.geometry import Geometry, Pose, complete_ray_field, rays_in_patient_frame
from xrlib.drr.projector import Projector, get_projector

PHYSICS = PHYSICS_CHAINS
#: Default superior padding (mm) for ``fov="pad"`` and the HU it is filled with (soft tissue).
PAD_MM = 80.0
PAD_HU = 40.0
#: Default path-length threshold (mm) above which a pixel belongs to a projected clavicle.
MASK_THRESHOLD_MM = 0.5


@dataclass
class Radiograph:
    """One rendered radiograph.

    Attributes:
        image: float32 ``(H, W)``. ``naive``/``heuristic``: the line integral ∫μ dl (dimensionless);
            ``realistic``: −log(I/I0) of the simulated detector signal. Row 0 is superior, column 0
            the patient's right.
        mask_left, mask_right: uint8 ``(H, W)`` projected clavicle masks (patient's left/right),
            or ``None`` without labels.
        field: bool ``(H, W)``, pixels whose rays cross the whole CT column (see module docstring).
        meta: geometry, pose, physics, backend, versions (JSON-serializable).
        display: float32 ``(H, W)`` display image in [0, 1] (:func:`xrlib.drr.physics.postprocess` of
            ``image`` inside ``field``) when rendered with ``display=True``, else ``None``.
    """

    image: np.ndarray
    mask_left: np.ndarray | None
    mask_right: np.ndarray | None
    field: np.ndarray
    meta: dict = field(default_factory=dict)
    display: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray | None:
        """Both clavicles (uint8)."""
        if self.mask_left is None or self.mask_right is None:
            return None
        return (self.mask_left | self.mask_right).astype(np.uint8)


def physics_channels(ct: Volume, physics: str, energy_kev: float = 60.0,
                     support_margin: int | None = None) -> tuple[list[Volume], list[str]]:
    """Volumes to project for a physics level, with their names.

    By default each channel is on ``ct``'s grid. With ``support_margin`` each is cropped to its non-zero
    voxels plus that many zero voxels per side (:func:`xrlib.core.ct.crop_to_support`), what a projector
    integrates; the realistic level's material densities are then made on their boxes directly
    (:func:`xrlib.drr.materials.material_density_crops`), without CT-sized copies, and a material with no
    voxel is one zero voxel (it integrates to zero).
    """
    if physics in ("naive", "heuristic"):
        mu = (mat.naive_mu if physics == "naive" else mat.heuristic_mu)(ct.array, energy_kev)
        vol = ct.with_array(mu)
        if support_margin is not None:
            vol = crop_to_support(vol, support_margin) or _zero_voxel(ct)
        return [vol], ["mu"]
    if physics == "realistic":
        if support_margin is None:
            dens = mat.material_densities(ct.array)
            return [ct.with_array(dens[m]) for m in mat.MATERIALS], list(mat.MATERIALS)
        crops = mat.material_density_crops(ct.array, margin=support_margin)
        return [ct.sub_grid(*crops[m]) if crops[m] else _zero_voxel(ct) for m in mat.MATERIALS], list(mat.MATERIALS)
    raise ValueError(f"unknown physics {physics!r}; expected one of {', '.join(PHYSICS)}")


def _zero_voxel(vol: Volume) -> Volume:
    """One float32 zero voxel at ``vol``'s first voxel: the channel of an empty crop (it integrates to zero)."""
    return vol.sub_grid(np.zeros((1, 1, 1), np.float32), (0, 0, 0))


def detector_prefilter_factors(vol: Volume, geometry: Geometry) -> tuple[int, int, int]:
    """Voxels of ``vol`` per detector pixel at the isocenter along each index axis ``(i, j, k)``, at least 1."""
    return tuple(max(1, int(np.floor(geometry.pitch_iso / float(s) + 1e-6))) for s in vol.spacing)


def detector_prefilter(vol: Volume, geometry: Geometry) -> Volume:
    """A physics channel as it is projected: cropped to its support, then averaged over blocks of
    :func:`detector_prefilter_factors` voxels (see the module docstring).

    The crop keeps a margin of one block of zero voxels where the grid allows: Joseph's projector
    integrates from the centre of a ray's first slice to the centre of its last, so a block that
    held non-zero voxels must not be the outermost one. Line integrals are then kept.
    """
    factors = detector_prefilter_factors(vol, geometry)
    if factors == (1, 1, 1):
        return vol
    sub = crop_to_support(vol, margin=max(factors))
    return vol if sub is None else block_mean(sub, factors)


def _superior_axis(vol: Volume, pad_mm: float) -> tuple[int, int, int, bool]:
    """``(index axis, slices to add, numpy axis, superior end is the high-index end)`` of a superior pad."""
    m = np.asarray(vol.direction, float)
    ax = int(np.argmax(np.abs(m[2, :])))  # index axis (i, j, k) along the SI direction
    return ax, int(np.ceil(pad_mm / vol.spacing[ax])), 2 - ax, bool(m[2, ax] > 0)


def _extend(vol: Volume, slab: np.ndarray, n: int, ax: int, np_axis: int, up: bool) -> Volume:
    """``vol`` with ``slab`` (``n`` slices) joined at its superior end; voxel positions unchanged."""
    origin = np.asarray(vol.origin, float)
    if not up:
        shift = np.zeros(3)
        shift[ax] = -n
        origin = vol.index_to_world[:3, :3] @ shift + origin
    arr = np.concatenate((vol.array, slab) if up else (slab, vol.array), axis=np_axis)
    return Volume(arr, vol.spacing, tuple(origin), vol.direction, vol.source)


def pad_zeros_superior(vol: Volume, pad_mm: float = PAD_MM) -> Volume:
    """``vol`` (e.g. a label map, or a crop of one) extended superiorly by ``ceil(pad_mm / spacing)`` zero slices."""
    ax, n, np_axis, up = _superior_axis(vol, pad_mm)
    shape = list(vol.array.shape)
    shape[np_axis] = n
    return _extend(vol, np.zeros(shape, vol.array.dtype), n, ax, np_axis, up)


def pad_superior(ct: Volume, labels: list[Volume], pad_mm: float = PAD_MM) -> tuple[Volume, list[Volume]]:
    """Extend ``ct`` (and label volumes on its grid) superiorly with bone-free soft tissue.

    The index axis closest to the patient's +z is found from the direction matrix; ``ceil(pad_mm /
    spacing)`` slices are added at its superior end. Each added CT slice is the body outline of
    the superior-most slice (HU > −500) filled with :data:`PAD_HU`, air (−1000 HU) elsewhere; label
    slices are 0. Voxel positions of the original grid are unchanged.
    """
    ax, n, np_axis, up = _superior_axis(ct, pad_mm)
    top = np.take(ct.array, -1 if up else 0, axis=np_axis)
    slab = np.where(top > -500.0, PAD_HU, -1000.0).astype(ct.array.dtype)
    slab = np.repeat(np.expand_dims(slab, np_axis), n, axis=np_axis)
    return _extend(ct, slab, n, ax, np_axis, up), [pad_zeros_superior(lab, pad_mm) for lab in labels]


def mask_channel(mask: Volume, fov: str = "pad", pad_mm: float = PAD_MM) -> Volume:
    """A clavicle mask as the projector's float32 channel, cropped to its support first.

    The crop (:func:`xrlib.core.ct.crop_to_support`, one zero voxel of margin) is what the projector
    integrates anyway; taking it from the uint8 mask, and padding only the crop for ``fov="pad"``, gives
    the same channel as padding and converting the whole CT-sized mask, without two CT-sized copies.
    An all-zero mask gives one zero voxel (it integrates to zero).
    """
    sub = crop_to_support(mask)
    if sub is None:
        return _zero_voxel(mask)
    sub = sub.with_array(sub.array.astype(np.float32))
    return pad_zeros_superior(sub, pad_mm) if fov == "pad" else sub


def render_channels(ct: Volume, clavicles: ClavicleMasks | None, physics: str, fov: str = "pad",
                    pad_mm: float = PAD_MM) -> tuple[Volume, list[Volume], list[str]]:
    """The volumes :func:`render_batch` projects: ``(ct, channels, names)``.

    ``ct`` is the CT as rendered (padded superiorly for ``fov="pad"``; its grid defines the
    complete-ray field); ``channels`` are the physics channels (named by ``names``) followed by the
    left and right clavicle masks as float32 (when ``clavicles`` is given), all on that grid.
    """
    masks = [] if clavicles is None else [clavicles.left, clavicles.right]
    masks = [m.with_array(m.array.astype(np.float32)) for m in masks]
    if fov == "pad":
        ct, masks = pad_superior(ct, masks, pad_mm)
    channels, names = physics_channels(ct, physics)
    return ct, channels + masks, names


RENDER_PACKAGES = ("xrlib", "numpy", "itk-rtk", "nanodrr", "diffdrr", "torch", "spekpy", "xraydb", "SimpleITK")




def _project_unique(proj: Projector, channels, geometry: Geometry, poses: list[Pose], iso) -> np.ndarray:
    """``proj.project`` of ``poses``, projecting a pose that repeats (e.g. one pose under several
    acquisition settings) once."""
    try:
        uniq = list(dict.fromkeys(poses))
    except TypeError:  # unhashable pose fields (e.g. a list shift): project every pose
        uniq = poses
    if len(uniq) == len(poses):
        return proj.project(channels, geometry, poses, iso)
    where = {p: i for i, p in enumerate(uniq)}
    return proj.project(channels, geometry, uniq, iso)[[where[p] for p in poses]]


#: Channel names of each physics level in a :class:`Projection` (naive and heuristic μ differ).
LEVEL_CHANNELS = {"naive": ("mu_naive",), "heuristic": ("mu_heuristic",), "realistic": tuple(mat.MATERIALS)}
MASK_CHANNELS = ("clavicle_left", "clavicle_right")


@dataclass
class Projection:
    """The forward projections of one CT at a list of poses, for one or several physics levels at once.

    Attributes:
        stack: float32 ``(B, C, H, W)`` line integrals, channel ``c`` named ``names[c]``
            (:data:`LEVEL_CHANNELS` per level, then :data:`MASK_CHANNELS` — path lengths in mm — when labelled).
        names: the channel names.
        fields: bool ``(B, H, W)`` complete-ray fields (see the module docstring).
        poses, geometry, isocenter_mm, backend, fov, pad_mm, ct_source, annotation: how it was made.
    """

    stack: np.ndarray
    names: list[str]
    fields: np.ndarray
    poses: list[Pose]
    geometry: Geometry
    isocenter_mm: np.ndarray
    backend: str
    fov: str
    pad_mm: float
    ct_source: str
    annotation: str | None

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(lv for lv, chans in LEVEL_CHANNELS.items() if set(chans) <= set(self.names))

    @property
    def nbytes(self) -> int:
        return int(self.stack.nbytes + self.fields.nbytes)


def project_levels(ct: Volume, clavicles: ClavicleMasks | None, geometry: Geometry, poses: Sequence[Pose],
                   levels: Sequence[str] = ("naive",), backend: str | Projector = "auto", fov: str = "pad",
                   pad_mm: float = PAD_MM, isocenter: np.ndarray | None = None, prefilter: bool = False) -> Projection:
    """Project the channels of every physics level in ``levels`` (and the clavicle masks) once for all ``poses``.

    The chains of :func:`radiographs` then make each level's images from the same line integrals, so
    images of one pose under several simulators share one projection (and one set of masks). With
    ``prefilter=True`` the physics channels pass :func:`detector_prefilter`.
    """
    levels = list(dict.fromkeys(levels))
    for lv in levels:
        if lv not in PHYSICS:
            raise ValueError(f"unknown physics {lv!r}; expected one of {', '.join(PHYSICS)}")
    if fov not in FOV_MODES:
        raise ValueError(f"unknown fov mode {fov!r}; expected one of {', '.join(FOV_MODES)}")
    proj = backend if isinstance(backend, Projector) else get_projector(backend)
    iso = ct.center if isocenter is None else np.asarray(isocenter, float)
    masks = [] if clavicles is None else [mask_channel(m, fov, pad_mm) for m in (clavicles.left, clavicles.right)]
    if fov == "pad":
        ct, _ = pad_superior(ct, [], pad_mm)
    channels, names = [], []
    # Each level's channels on their supports, with the margin the crops below keep (the projector's
    # one voxel, or the prefilter's block), so cropping them again is a view, not a CT-sized copy.
    margin = max(detector_prefilter_factors(ct, geometry)) if prefilter else 1
    for lv in levels:
        level = physics_channels(ct, lv, support_margin=margin)[0]
        channels += [detector_prefilter(c, geometry) for c in level] if prefilter else level
        names += list(LEVEL_CHANNELS[lv])
    channels += masks
    names += list(MASK_CHANNELS) if masks else []
    poses = list(poses)
    stack = _project_unique(proj, channels, geometry, poses, iso)
    if fov in ("pad", "collimate"):
        fields = np.stack([complete_ray_field(rays_in_patient_frame(geometry, p, iso), ct.index_to_world, ct.shape_ijk)
                           for p in poses])
    else:
        fields = np.ones((len(poses), geometry.height, geometry.width), bool)
    return Projection(stack, names, fields, poses, geometry, iso, proj.name, fov,
                      float(pad_mm) if fov == "pad" else 0.0, ct.source, None if clavicles is None else clavicles.source)


def radiographs(projection: Projection, physics: str, indices: Sequence[int] | None = None, seed: int | None = 0,
                mask_threshold_mm: float = MASK_THRESHOLD_MM,
                realistic: phys.RealisticParams | Sequence[phys.RealisticParams] | None = None,
                display: bool = False) -> list[Radiograph]:
    """The radiographs of ``physics`` at the poses ``indices`` of ``projection`` (default all).

    Arguments as in :func:`render_batch`; ``realistic`` may hold one parameter set per index. The noise
    stream of a pose is the ``i``-th child of ``SeedSequence(seed)`` for the pose's index ``i`` in the
    projection, so a subset of a longer projection gets the same images as a projection of the subset.
    """
    if physics not in projection.levels:
        raise ValueError(f"the projection has no {physics!r} channels (it has {', '.join(projection.levels) or 'none'})")
    if not mask_threshold_mm > 0:
        raise ValueError(f"mask threshold must be positive, got {mask_threshold_mm} mm")
    idx = list(range(len(projection.poses))) if indices is None else [int(i) for i in indices]
    if isinstance(realistic, (list, tuple)):
        per_pose = list(realistic)
        if len(per_pose) != len(idx):
            raise ValueError(f"got {len(per_pose)} realistic parameter sets for {len(idx)} poses")
    else:
        per_pose = [realistic or phys.RealisticParams()] * len(idx)
    streams = np.random.SeedSequence(seed).spawn(max(idx) + 1 if idx else 0)
    col = {n: i for i, n in enumerate(projection.names)}
    geometry = projection.geometry
    labelled = MASK_CHANNELS[0] in col
    out = []
    for params, b in zip(per_pose, idx):
        pose, fld, stack = projection.poses[b], projection.fields[b], projection.stack[b]
        if physics == "realistic":
            integrals = {m: stack[col[m]] for m in mat.MATERIALS}
            image = phys.realistic_image(integrals, geometry.pitch, geometry.sdd, params, np.random.default_rng(streams[b]))
        else:
            image = stack[col[LEVEL_CHANNELS[physics][0]]]
        image = np.where(fld, image, 0.0).astype(np.float32)
        left = right = None
        if labelled:
            left = ((stack[col[MASK_CHANNELS[0]]] >= mask_threshold_mm) & fld).astype(np.uint8)
            right = ((stack[col[MASK_CHANNELS[1]]] >= mask_threshold_mm) & fld).astype(np.uint8)
        meta = {
            "geometry": geometry.to_dict(),
            "pose": pose.to_dict(),
            "isocenter_mm": [float(x) for x in projection.isocenter_mm],
            "physics": physics,
            "physics_params": params.to_dict() if physics == "realistic" else {"energy_kev": 60.0},
            "backend": projection.backend,
            "fov": projection.fov,
            "pad_mm": projection.pad_mm,
            "field_fraction": float(fld.mean()),
            "mask_threshold_mm": float(mask_threshold_mm),
            "ct": projection.ct_source,
            "annotation": projection.annotation,
            "seed": seed,
            "versions": versions(RENDER_PACKAGES),
            "conventions": "row 0 superior, column 0 = patient's right; see xrlib.drr.geometry",
        }
        shown = phys.postprocess(image, fld, pitch_mm=geometry.pitch) if display else None
        out.append(Radiograph(image, left, right, fld, meta, shown))
    return out


def render_batch(
    ct: Volume,
    clavicles: ClavicleMasks | None,
    geometry: Geometry,
    poses: Sequence[Pose],
    physics: str = "naive",
    backend: str | Projector = "auto",
    seed: int | None = 0,
    fov: str = "pad",
    pad_mm: float = PAD_MM,
    mask_threshold_mm: float = MASK_THRESHOLD_MM,
    realistic: phys.RealisticParams | Sequence[phys.RealisticParams] | None = None,
    isocenter: np.ndarray | None = None,
    display: bool = False,
    prefilter: bool = False,
) -> list[Radiograph]:
    """Render ``ct`` (and its clavicle masks) at every pose in ``poses``.

    :func:`project_levels` for one physics level, then :func:`radiographs`.

    Args:
        ct: CT volume in HU.
        clavicles: left/right clavicle masks on the CT grid, or ``None``.
        geometry: detector and distances (:class:`xrlib.drr.geometry.Geometry`).
        poses: patient poses (α, tilt, shift).
        physics: ``naive``, ``heuristic`` or ``realistic`` (see :mod:`xrlib.drr.physics`).
        backend: projector name (``auto``, ``rtk``, ``torch``, ``diffdrr``) or an instance.
        seed: seed of the noise generator (realistic physics); poses get independent streams.
        fov: ``pad``, ``collimate`` or ``none`` (see the module docstring).
        pad_mm: superior padding for ``fov="pad"`` (mm).
        mask_threshold_mm: path length through a clavicle above which a pixel is in its mask.
        realistic: parameters of the realistic chain (default :class:`xrlib.drr.physics.RealisticParams`),
            or one per pose (e.g. per-image acquisition settings, :mod:`xrlib.drr.acquisition`).
        isocenter: rotation centre (mm, LPS); default the CT grid centre.
        display: also post-process each image for display (``Radiograph.display``: window + unsharp
            masking of :func:`xrlib.drr.physics.postprocess` at the detector pitch, [0, 1]).
        prefilter: project the physics channels through :func:`detector_prefilter`.
    """
    if physics not in PHYSICS:
        raise ValueError(f"unknown physics {physics!r}; expected one of {', '.join(PHYSICS)}")
    if not mask_threshold_mm > 0:
        raise ValueError(f"mask threshold must be positive, got {mask_threshold_mm} mm")
    if isinstance(realistic, (list, tuple)) and len(realistic) != len(poses):
        raise ValueError(f"got {len(realistic)} realistic parameter sets for {len(poses)} poses")
    projection = project_levels(ct, clavicles, geometry, poses, (physics,), backend, fov, pad_mm, isocenter, prefilter)
    return radiographs(projection, physics, None, seed, mask_threshold_mm, realistic, display)


def render(ct: Volume, clavicles: ClavicleMasks | None, geometry: Geometry, pose: Pose = Pose(), **kwargs) -> Radiograph:
    """Render one pose; keyword arguments as in :func:`render_batch`."""
    return render_batch(ct, clavicles, geometry, [pose], **kwargs)[0]
