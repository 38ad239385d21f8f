"""A differentiable DRR renderer: line integrals of μ and clavicle masks as torch functions of the pose.

:class:`DifferentiableRenderer` renders what :func:`xrlib.drr.render.render_batch` renders for the
``naive`` (or ``heuristic``) physics chain — the line integral ∫μ dl, the clavicles' path lengths
and the complete-ray field, in the same frames, pixel conventions and field-of-view handling
(:mod:`xrlib.drr.geometry`, :mod:`xrlib.drr.render`) — with gradients w.r.t. α, tilt and shift
(and, on request, the μ volume)::

    r = DifferentiableRenderer(ct, clavicles, geometry)      # pads, converts, crops, uploads once
    out = r(alpha, tilt, shift)                             # (B,), (B,), (B, 3) tensors
    out.image, out.mask_left, out.mask_right, out.field     # (B, H, W) tensors

Ray marching (Joseph's method in torch)
---------------------------------------
Each channel group (μ; both clavicle masks together) is cropped to its non-zero support once and
kept on the device as a stack of 2-D slices across its *marching axis*, the index axis closest to
the anterior–posterior direction (the direction of the rays). A ray is sampled where it crosses
every ``stride``-th slice plane, bilinearly inside the slice (:func:`torch.nn.functional.grid_sample`
with the slices as its batch, all poses and pixels as its output), and the samples are summed and
weighted by the ray length per slice, ``|ray| / |ray_axis| · stride`` mm. With ``stride = 1``
(``step_mm=None``, the default) this is the Joseph projector that the ``rtk`` backend runs (one
sample per slice), so the two agree to well under 1 %; a larger ``step_mm`` skips slices
(aliasing) for speed. The sample positions are built in torch from the pose
(:func:`xrlib.drr.geometry.rays_torch`), so everything is differentiable: w.r.t. the pose
through the positions and the length weights, w.r.t. the volume through the samples. Rays
must stay within 45° of the marching axis (``|α|``, ``|tilt|`` up to about 35° with the paper's cone).

The field (:func:`xrlib.drr.geometry.complete_ray_field`) is a boolean mask computed with numpy
from the detached pose; image and masks are 0 outside it, as in ``render_batch``.

Smoothed guide (``smooth_mm``)
------------------------------
Bilinear interpolation makes a marched image piecewise linear in the pose: its local derivative
sees the kinks between voxels (and the CT's voxel-scale noise), not the trend that a step of about
a degree or a millimetre follows. ``smooth_mm = σ`` convolves μ with a Gaussian of standard
deviation σ mm per axis (``scipy.ndimage.gaussian_filter``, σ/spacing voxels, line integrals
kept) before marching, a prefilter matched to the sampling (about one voxel, ~1 mm): the image
is then smooth in the pose at that scale. Such a renderer *guides* a pose search (whether its
derivative follows central differences at the search's step scale is checked by
:func:`xrlib.attacks.pose.gradient_check`); images that are scored come from the unsmoothed one. The clavicle masks are never smoothed.

Volume gradient: ``r.mu`` is the cropped (and, with ``prefilter``, block-averaged) μ volume (1/mm, numpy layout ``(k, j, i)`` of the grid
``r.mu_volume``) as a leaf tensor; ``r.mu.requires_grad_(True)`` makes the next calls
differentiable w.r.t. it (``r.mu.grad`` after ``backward``). Without it the renderer uses a copy
laid out for marching, made once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrlib.core.ct import ClavicleMasks, Volume, crop_to_support
from xrlib.core.profiles import FOV_MODES
from xrlib.core.runs import resolve_device
from xrlib.drr.geometry import Geometry, Pose, complete_ray_field, rays_in_patient_frame, rays_torch
from xrlib.drr.render import PAD_MM, detector_prefilter, render_channels

#: Physics chains the differentiable renderer supports (line integrals of one μ channel).
DIFF_PHYSICS = ("naive", "heuristic")


@dataclass
class RenderOutput:
    """One batch of differentiable radiographs, each ``(B, H, W)`` on the renderer's device.

    ``image``: ∫μ dl (dimensionless); ``mask_left``/``mask_right``: path lengths (mm) through the
    patient's left/right clavicle, before binarisation (``None`` without clavicles); ``field``:
    bool, the complete-ray field. Image and masks are 0 outside ``field``.
    """

    image: "object"
    mask_left: "object"
    mask_right: "object"
    field: "object"


def _march(vol, coef, planes, chunk: int):
    """``Σ_m grid_sample(vol[m], base + planes[m] · slope)``, ``(C, N)``, with a hand-written backward.

    ``vol`` is ``(S, C, rows, cols)``, ``coef`` ``(2, N·2)`` = (slope, base) of the normalised sample
    coordinates and ``planes`` ``(S,)``. Planes are processed ``chunk`` at a time in reused buffers
    (small enough for the allocator to recycle them, which avoids page faults on a CPU); the
    backward pass calls grid_sample's backward per chunk directly, so it neither stores the
    sample grid nor re-runs the forward sampling.
    """
    import torch

    class March(torch.autograd.Function):
        @staticmethod
        def forward(ctx, vol, coef):
            ctx.save_for_backward(vol, coef)
            return _march_chunks(vol, coef, planes, chunk, None)

        @staticmethod
        def backward(ctx, grad):
            vol, coef = ctx.saved_tensors
            return _march_chunks(vol, coef, planes, chunk, (grad, ctx.needs_input_grad[0]))

    return March.apply(vol, coef)


def _march_chunks(vol, coef, planes, chunk: int, backward):
    """Forward sums (``backward=None``) or ``(grad_vol, grad_coef)`` for ``backward=(grad, need_vol)``."""
    import torch
    import torch.nn.functional as F

    n = coef.shape[1] // 2
    buf = coef.new_empty(min(chunk, len(planes)), 2 * n)
    if backward is None:
        total = vol.new_zeros(vol.shape[1], n)
    else:
        grad, need_vol = backward
        grad_vol = torch.zeros_like(vol) if need_vol else None
        grad_coef = torch.zeros_like(coef)
    for i in range(0, len(planes), chunk):
        m = planes[i : i + chunk, None]
        grid = torch.addcmul(coef[1], m, coef[0], out=buf[: len(m)]).view(len(m), 1, n, 2)
        if backward is None:
            total += F.grid_sample(vol[i : i + chunk], grid, mode="bilinear", padding_mode="zeros",
                                   align_corners=False).sum(0)[:, 0]
            continue
        go = grad[None, :, None, :].expand(len(m), -1, -1, -1).contiguous()
        gi, gg = torch.ops.aten.grid_sampler_2d_backward(go, vol[i : i + chunk], grid, 0, 0, False, [need_vol, True])
        gg = gg.reshape(len(m), 2 * n)
        grad_coef[0] += (gg * m).sum(0)
        grad_coef[1] += gg.sum(0)
        if need_vol:
            grad_vol[i : i + chunk] = gi
    return total if backward is None else (grad_vol, grad_coef)


class _Group:
    """Channels on one cropped grid, laid out as ``(slices, C, rows, cols)`` across the marching axis."""

    def __init__(self, vols: list[Volume], stride_mm: float | None, torch, device, dtype):
        v = vols[0]
        a3 = v.index_to_world[:3, :3]
        ap = a3[1, :] / np.linalg.norm(a3, axis=0)
        self.axis = int(np.argmax(np.abs(ap)))  # index axis closest to the patient's y (the rays)
        self.other = [ax for ax in (2, 1, 0) if ax != self.axis]  # (rows, cols) index axes, numpy order
        spacing = float(v.spacing[self.axis])
        self.stride = 1 if stride_mm is None else max(1, int(round(stride_mm / spacing)))
        n = v.shape_ijk[self.axis]
        count = (n - 1) // self.stride + 1
        self.first = ((n - 1) - self.stride * (count - 1)) // 2  # centre the sampled planes
        self.planes = torch.arange(self.first, n, self.stride, device=device, dtype=dtype)
        self.sizes = [v.shape_ijk[ax] for ax in self.other]  # rows, cols
        self.i2w = torch.as_tensor(v.index_to_world, dtype=dtype, device=device)
        self.w2i = torch.as_tensor(np.linalg.inv(v.index_to_world), dtype=dtype, device=device)
        self.leaves = [torch.as_tensor(x.array, device=device).to(dtype) for x in vols]  # (k, j, i) each
        self.torch = torch
        self._cached = self.layout().contiguous()

    def layout(self):
        """The channels as ``(slices, C, rows, cols)``, sampled slices only."""
        t = self.torch.stack(self.leaves)  # (C, k, j, i)
        t = t.permute(3 - self.axis, 0, *[3 - ax for ax in self.other])
        return t[self.first :: self.stride]

    def integrals(self, src, pix, max_samples: int):
        """Line integrals ``(C, B, H, W)`` of the rays from ``src`` ``(B, 3)`` to ``pix`` ``(B, H, W, 3)``."""
        torch = self.torch
        vol = self.layout() if any(x.requires_grad for x in self.leaves) else self._cached
        w3, wt = self.w2i[:3, :3], self.w2i[:3, 3]
        s = src @ w3.T + wt  # (B, 3) index coordinates
        d = (pix - src[:, None, None, :]) @ w3.T  # (B, H, W, 3) ray vectors in index units
        da = d[..., self.axis]
        if bool((da.detach().abs()[..., None] < d.detach().abs()).any()):
            raise ValueError("a ray is more than 45° from the marching axis; the pose is out of range")
        b, h, w = da.shape
        weight = (pix - src[:, None, None, :]).norm(dim=-1) / da.abs() * self.stride  # mm per sampled plane
        coords = []  # normalised grid coordinates: x ↔ cols, y ↔ rows, each base + plane · slope
        for ax, n in zip(self.other[::-1], self.sizes[::-1]):
            slope = d[..., ax] / da
            base = s[:, ax, None, None] - s[:, self.axis, None, None] * slope
            coords.append(((2.0 * base + 1.0) / n - 1.0, 2.0 * slope / n))
        (bx, sx), (by, sy) = coords
        # Sample positions of plane m: base + m · slope, per pixel and grid coordinate (x, y).
        coef = torch.stack([torch.stack([sx, sy], -1).reshape(-1), torch.stack([bx, by], -1).reshape(-1)])
        chunk = max(1, max_samples // (b * h * w))
        total = _march(vol, coef, self.planes, chunk)  # (C, B·H·W)
        return total.reshape(-1, b, h, w) * weight


def gaussian_smooth(vol: Volume, sigma_mm: float) -> Volume:
    """``vol`` convolved with an isotropic Gaussian of ``sigma_mm`` (mm) standard deviation per axis.

    The grid grows by a 3σ margin of zero voxels first, so no mass is cut at its faces (line
    integrals, i.e. sums along a ray, are kept up to the margin's truncation).
    """
    from scipy.ndimage import gaussian_filter

    sig = np.array([sigma_mm / float(s) for s in vol.spacing[::-1]])  # numpy axes (k, j, i)
    pad = np.ceil(3.0 * sig).astype(int)
    arr = np.pad(np.asarray(vol.array, np.float32), [(int(p), int(p)) for p in pad])
    out = gaussian_filter(arr, sig, mode="constant", truncate=3.0)
    origin = vol.index_to_world[:3, :3] @ (-pad[::-1].astype(float)) + np.asarray(vol.origin, float)
    return Volume(out, vol.spacing, tuple(origin), vol.direction, vol.source)


class DifferentiableRenderer:
    """Differentiable naive-physics DRRs of one CT and its clavicles (see the module docstring).

    Args:
        ct: CT volume in HU.
        clavicles: left/right clavicle masks on the CT grid, or ``None`` (then the masks are ``None``).
        geometry: detector and distances.
        physics: ``naive`` (required by the study) or ``heuristic``.
        device: torch device (default :func:`xrlib.core.runs.default_device`).
        fov, pad_mm: field-of-view handling as in :func:`xrlib.drr.render.render_batch`.
        isocenter: rotation centre (mm, LPS); default the (unpadded) CT grid centre, as ``render_batch``.
        step_mm: sampling step along the marching axis; ``None`` = every slice (Joseph, as ``rtk``).
        dtype: torch dtype of volumes and geometry (``torch.float32``; float64 for gradient checks).
        max_samples: samples per chunk of slices (small chunks let the allocator reuse their buffers).
        prefilter: march the μ volume as :func:`xrlib.drr.render.detector_prefilter` leaves it, as
            ``render_batch(prefilter=True)`` projects it.
        smooth_mm: standard deviation (mm) of a Gaussian applied to μ before marching (0: none); a
            search guide, see the module docstring.
    """

    def __init__(self, ct: Volume, clavicles: ClavicleMasks | None, geometry: Geometry, physics: str = "naive",
                 device=None, fov: str = "pad", pad_mm: float = PAD_MM, isocenter: np.ndarray | None = None,
                 step_mm: float | None = None, dtype=None, max_samples: int = 2**21, prefilter: bool = False,
                 smooth_mm: float = 0.0):
        import torch

        if physics not in DIFF_PHYSICS:
            raise ValueError(f"the differentiable renderer supports physics {', '.join(DIFF_PHYSICS)}, got {physics!r}")
        if fov not in FOV_MODES:
            raise ValueError(f"unknown fov mode {fov!r}; expected one of {', '.join(FOV_MODES)}")
        if not np.isfinite(smooth_mm) or smooth_mm < 0:
            raise ValueError(f"smooth_mm must be a finite number ≥ 0 (mm), got {smooth_mm!r}")
        self.smooth_mm = float(smooth_mm)
        self.torch = torch
        self.device = resolve_device(device)
        self.dtype = dtype or torch.float32
        self.geometry, self.physics, self.fov = geometry, physics, fov
        self.max_samples = int(max_samples)
        self.isocenter = ct.center if isocenter is None else np.asarray(isocenter, float)
        ct, channels, _ = render_channels(ct, clavicles, physics, fov, pad_mm)
        mu, masks = channels[0], channels[1:]
        if prefilter:
            mu = detector_prefilter(mu, geometry)
        if self.smooth_mm > 0:
            mu = gaussian_smooth(mu, self.smooth_mm)
        self.grid = (ct.index_to_world, ct.shape_ijk)  # the (padded) CT grid that defines the field
        self.mu_volume = crop_to_support(mu) or mu
        self._mu = _Group([self.mu_volume], step_mm, torch, self.device, self.dtype)
        self._masks = None
        if masks:
            both = crop_to_support(masks[0].with_array(masks[0].array + masks[1].array))
            if both is not None:
                start = np.rint(np.linalg.solve(ct.index_to_world[:3, :3], np.subtract(both.origin, ct.origin))).astype(int)
                i, j, k = start
                ni, nj, nk = both.shape_ijk
                crops = [both.with_array(np.ascontiguousarray(m.array[k:k + nk, j:j + nj, i:i + ni])) for m in masks]
                self._masks = _Group(crops, step_mm, torch, self.device, self.dtype)
        self.has_masks = bool(masks)
        g = geometry
        self._du = (torch.arange(g.width, dtype=self.dtype, device=self.device) + 0.5 - g.width / 2.0) * g.pitch
        self._dv = (torch.arange(g.height, dtype=self.dtype, device=self.device) + 0.5 - g.height / 2.0) * g.pitch

    @property
    def mu(self):
        """The cropped μ volume (1/mm, ``(k, j, i)`` on :attr:`mu_volume`'s grid) as a leaf tensor.

        ``r.mu.requires_grad_(True)`` makes later calls differentiable w.r.t. it (``r.mu.grad``).
        """
        return self._mu.leaves[0]

    def fields(self, alpha, tilt, shift):
        """Complete-ray fields ``(B, H, W)`` (bool) of the poses (numpy, as ``render_batch``)."""
        g = self.geometry
        out = []
        for a, t, s in zip(np.atleast_1d(alpha), np.atleast_1d(tilt), np.reshape(shift, (-1, 3))):
            if self.fov == "none":
                out.append(np.ones((g.height, g.width), bool))
                continue
            rays = rays_in_patient_frame(g, Pose(float(a), float(t), tuple(float(x) for x in s)), self.isocenter)
            out.append(complete_ray_field(rays, *self.grid))
        return self.torch.from_numpy(np.stack(out)).to(self.device)

    def __call__(self, alpha, tilt=None, shift=None) -> RenderOutput:
        """Render a batch of poses: ``alpha``, ``tilt`` (deg) ``(B,)``, ``shift`` (mm, LPS) ``(B, 3)``."""
        torch = self.torch
        as_t = lambda x: torch.as_tensor(x, device=self.device).to(self.dtype)  # noqa: E731 - keeps the graph
        alpha = torch.atleast_1d(as_t(alpha))
        tilt = torch.zeros_like(alpha) if tilt is None else torch.atleast_1d(as_t(tilt))
        shift = torch.zeros(len(alpha), 3, dtype=self.dtype, device=self.device) if shift is None else as_t(shift).reshape(-1, 3)
        src, det, e_u, e_v = rays_torch(self.geometry, alpha, tilt, shift, self.isocenter)
        pix = (det[:, None, None, :] + self._dv[None, :, None, None] * e_v[:, None, None, :]
               + self._du[None, None, :, None] * e_u[:, None, None, :])  # (B, H, W, 3) pixel centres, patient frame
        fld = self.fields(alpha.detach().cpu().numpy(), tilt.detach().cpu().numpy(), shift.detach().cpu().numpy())
        image = torch.where(fld, self._mu.integrals(src, pix, self.max_samples)[0], 0.0)
        left = right = None
        if self.has_masks:
            if self._masks is None:
                left = right = torch.zeros_like(image)
            else:
                left, right = torch.where(fld, self._masks.integrals(src, pix, self.max_samples), 0.0)
        return RenderOutput(image, left, right, fld)
