"""Forward projectors: line integrals of volume channels for a batch of poses.

All backends share one interface, :meth:`Projector.project`, and one geometry
(:mod:`xrlib.drr.geometry`). Each input channel is a :class:`~xrlib.core.ct.Volume` (e.g. μ in 1/mm, a
material density in g/cm³, or a 0/1 clavicle mask); the output for a channel is its line integral
along every detector ray, in *channel units × mm* (μ → dimensionless; mask → path length in mm).

Backends
--------
``rtk``
    itk-rtk's Joseph forward projector (bilinear interpolation in the slices crossed by each ray,
    one sample per slice). Multi-threaded C++; the default on a CPU.
``torch``
    nanodrr's ray marcher (trilinear samples every ``step_mm`` along the part of the ray inside
    the grid). Differentiable; uses its fused Triton kernel on CUDA, where it is the default.
``diffdrr``
    DiffDRR's Siddon ray tracer (exact intersection lengths with nearest-voxel values). Slow and
    memory-hungry; kept as an independent reference for cross-checks.

Every channel is first cropped to its non-zero support (:func:`xrlib.core.ct.crop_to_support`), which
leaves line integrals unchanged (for ``rtk`` up to a difference at the crop's faces that the function
documents) and makes sparse channels such as clavicle masks cheap. Channels that arrive cropped (as
:func:`xrlib.drr.render.project_levels` makes them) are cropped again without a copy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from xrlib.core.profiles import PROJECTOR_BACKENDS
from xrlib.core.runs import default_device
from xrlib.core.ct import Volume, crop_to_support
from xrlib.drr.geometry import Geometry, Pose, Rays, rays_in_patient_frame

BACKENDS = PROJECTOR_BACKENDS


class Projector(ABC):
    """Common interface of the projector backends."""

    name: ClassVar[str]

    def project(
        self,
        channels: Sequence[Volume],
        geometry: Geometry,
        poses: Sequence[Pose],
        isocenter: np.ndarray,
        crop: bool = True,
    ) -> np.ndarray:
        """Line integrals of each channel for each pose.

        Args:
            channels: volumes to integrate (any grids; usually one CT grid).
            geometry: detector and distances.
            poses: patient poses, one projection each.
            isocenter: rotation centre in the patient frame (mm, LPS).
            crop: skip empty space by cropping each channel to its non-zero support.

        Returns:
            float32 array ``(len(poses), len(channels), H, W)`` in channel units × mm.
        """
        if len(poses) == 0:
            raise ValueError("need at least one pose")
        rays = [rays_in_patient_frame(geometry, p, isocenter) for p in poses]
        out = np.zeros((len(poses), len(channels), geometry.height, geometry.width), np.float32)
        for c, vol in enumerate(channels):
            if vol.array.ndim != 3:
                raise ValueError(f"channel {c} is not a 3-D volume (shape {vol.array.shape})")
            v = crop_to_support(vol) if crop else vol
            if v is None:
                continue  # an all-zero channel integrates to zero
            v = Volume(np.ascontiguousarray(v.array, dtype=np.float32), v.spacing, v.origin, v.direction, v.source)
            out[:, c] = self._project_volume(v, rays)
        return out

    @abstractmethod
    def _project_volume(self, vol: Volume, rays: list[Rays]) -> np.ndarray:
        """Line integrals ``(B, H, W)`` of one float32 volume for the given rays."""


class RTKProjector(Projector):
    """itk-rtk Joseph forward projector (CPU, multi-threaded)."""

    name = "rtk"

    def __init__(self) -> None:
        import itk
        from itk import RTK as rtk

        self._itk, self._rtk = itk, rtk
        self._image_type = itk.Image[itk.F, 3]

    def itk_volume(self, vol: Volume):
        """An ITK view of ``vol`` (no copy); the caller keeps ``vol.array`` alive."""
        img = self._itk.image_view_from_array(vol.array)
        img.SetSpacing([float(s) for s in vol.spacing])
        img.SetOrigin([float(o) for o in vol.origin])
        img.SetDirection(self._itk.matrix_from_array(np.asarray(vol.direction, float)))
        return img

    def rtk_geometry(self, rays: list[Rays]):
        """An RTK geometry with one projection per pose, given by source, detector centre and axes."""
        itk = self._itk
        geo = self._rtk.ThreeDCircularProjectionGeometry.New()
        for r in rays:
            ok = geo.AddProjection(
                itk.Point[itk.D, 3]([float(x) for x in r.source]),
                itk.Point[itk.D, 3]([float(x) for x in r.detector]),
                itk.Vector[itk.D, 3]([float(x) for x in r.e_u]),
                itk.Vector[itk.D, 3]([float(x) for x in r.e_v]),
            )
            if not ok:
                raise RuntimeError("itk-rtk rejected the projection geometry")
        return geo

    def empty_stack(self, geometry: Geometry, n: int):
        """Zero projection stack whose pixel centres match :meth:`Rays.pixel_centers`."""
        src = self._rtk.ConstantImageSource[self._image_type].New()
        p = geometry.pitch
        src.SetSize([geometry.width, geometry.height, n])
        src.SetSpacing([p, p, 1.0])
        src.SetOrigin([-(geometry.width - 1) / 2.0 * p, -(geometry.height - 1) / 2.0 * p, 0.0])
        src.SetConstant(0.0)
        return src

    def _project_volume(self, vol: Volume, rays: list[Rays]) -> np.ndarray:
        stack = self.empty_stack(rays[0].geometry, len(rays))
        f = self._rtk.JosephForwardProjectionImageFilter[self._image_type, self._image_type].New()
        f.SetInput(0, stack.GetOutput())
        f.SetInput(1, self.itk_volume(vol))
        f.SetGeometry(self.rtk_geometry(rays))
        f.Update()
        return np.array(self._itk.array_view_from_image(f.GetOutput()), dtype=np.float32, copy=True)



class TorchProjector(Projector):
    """nanodrr ray marcher: differentiable, fused Triton kernel on CUDA.

    Args:
        device: torch device (default: CUDA if available, else CPU).
        step_mm: sampling step along each ray in mm (default: the smallest voxel spacing).
        max_samples: upper bound on the number of samples held in memory at once by the
            ``grid_sample`` path used on a CPU (rows of the detector are processed in chunks to
            respect it). The fused GPU kernel holds no samples and renders all poses in one call.
    """

    name = "torch"

    def __init__(self, device: str | None = None, step_mm: float | None = None, max_samples: int = 2**25):
        import torch

        self.torch = torch
        self.device = torch.device(device or default_device())
        self.step_mm = step_mm
        self.max_samples = max_samples

    def subject(self, vol: Volume):
        """A nanodrr ``Subject`` for ``vol`` in the patient (LPS) frame, intensities used as is."""
        from nanodrr.data import Subject

        torch = self.torch
        a = torch.from_numpy(vol.index_to_world)
        img = torch.from_numpy(vol.array)[None, None]
        return Subject(
            img,
            torch.zeros(1, 1, 1, 1, 1),  # no label map: one output channel
            a.float(),
            a.inverse().float(),
            Subject._make_voxel_to_grid(img.shape),
            torch.from_numpy(vol.center).float(),
            max_label=0,
            convert_to_mu=False,
        ).to(self.device)

    def n_samples(self, vol: Volume) -> int:
        """Samples per ray so that the longest chord through the grid is sampled every ``step_mm``."""
        step = self.step_mm or float(min(vol.spacing))
        return max(2, int(math.ceil(float(np.linalg.norm(vol.extent_mm)) / step)))

    def _project_volume(self, vol: Volume, rays: list[Rays]) -> np.ndarray:
        from nanodrr.camera import make_k_inv
        from nanodrr.drr.backends import pick_fused_backend
        from nanodrr.drr.renderer import _make_tgt, render

        torch = self.torch
        g = rays[0].geometry
        dev = self.device
        subject = self.subject(vol)
        n = self.n_samples(vol)
        k_inv = make_k_inv(g.sdd, g.pitch, g.pitch, 0.0, 0.0, g.height, g.width).to(dev)
        sdd = torch.tensor([g.sdd], device=dev)
        out = np.empty((len(rays), g.height, g.width), np.float32)
        rt_all = torch.from_numpy(np.stack([r.camera_to_patient() for r in rays])).float().to(dev)
        with torch.no_grad():
            tgt_all = _make_tgt(k_inv, sdd, g.height, g.width, dev, torch.float32)
            if pick_fused_backend(subject, rt_all, tgt_all, g.height, g.width):
                # Fused kernel (Triton on CUDA): memory O(rays), so every pose and row in one launch.
                img = render(subject, k_inv, rt_all, sdd, g.height, g.width, n_samples=n,
                             src=torch.zeros(1, 1, 3, device=dev), tgt=tgt_all)
                out[:] = img[:, 0].cpu().numpy()
                return out
            # grid_sample path (CPU): it holds every sample, so march chunks of detector rows.
            rows = max(1, min(g.height, self.max_samples // (n * g.width)))
            for b in range(len(rays)):
                for r0 in range(0, g.height, rows):
                    r1 = min(g.height, r0 + rows)
                    img = render(
                        subject, k_inv, rt_all[b : b + 1], sdd, r1 - r0, g.width, n_samples=n,
                        src=torch.zeros(1, 1, 3, device=dev), tgt=tgt_all[:, r0 * g.width : r1 * g.width],
                    )
                    out[b, r0:r1] = img[0, 0].cpu().numpy()
        return out


class DiffDRRProjector(Projector):
    """DiffDRR's Siddon ray tracer: exact radiological path, nearest-voxel values (reference)."""

    name = "diffdrr"

    def __init__(self, device: str | None = None, rays_per_chunk: int = 8192):
        import torch

        self.torch = torch
        self.device = torch.device(device or default_device())
        self.rays_per_chunk = rays_per_chunk

    def _project_volume(self, vol: Volume, rays: list[Rays]) -> np.ndarray:
        from diffdrr.renderers import Siddon

        torch = self.torch
        g = rays[0].geometry
        siddon = Siddon(voxel_shift=0.5)  # voxel centres at integer indices, as in ITK
        density = torch.from_numpy(np.ascontiguousarray(vol.array.transpose(2, 1, 0))).to(self.device)
        w2i = np.linalg.inv(vol.index_to_world)
        out = np.empty((len(rays), g.height * g.width), np.float32)
        with torch.no_grad():
            for b, r in enumerate(rays):
                src = w2i[:3, :3] @ r.source + w2i[:3, 3]
                tgt = r.pixel_centers().reshape(-1, 3) @ w2i[:3, :3].T + w2i[:3, 3]
                length = np.linalg.norm(r.pixel_centers().reshape(-1, 3) - r.source, axis=1)
                for i0 in range(0, len(tgt), self.rays_per_chunk):
                    sl = slice(i0, i0 + self.rays_per_chunk)
                    t = torch.from_numpy(tgt[sl]).float()[None].to(self.device)
                    s = torch.from_numpy(src).float()[None, None].to(self.device)
                    img = torch.from_numpy(length[sl]).float()[None, None].to(self.device)
                    out[b, sl] = siddon(density, s, t, img)[0, 0].cpu().numpy()
        return out.reshape(len(rays), g.height, g.width)


def default_backend() -> str:
    """``torch`` (nanodrr + Triton) on CUDA, ``rtk`` on a CPU."""
    return "torch" if default_device() == "cuda" else "rtk"


def get_projector(name: str = "auto", **kwargs) -> Projector:
    """A projector by backend name: ``auto``, ``rtk``, ``torch`` or ``diffdrr``."""
    if name == "auto":
        name = default_backend()
    classes = {"rtk": RTKProjector, "torch": TorchProjector, "diffdrr": DiffDRRProjector}
    if name not in classes:
        raise ValueError(f"unknown projector backend {name!r}; expected one of auto, {', '.join(BACKENDS)}")
    return classes[name](**kwargs)


def compare_backends(
    channels: Sequence[Volume],
    geometry: Geometry,
    pose: Pose,
    isocenter: np.ndarray,
    backends: Sequence[str] = BACKENDS,
    field: np.ndarray | None = None,
) -> tuple["object", dict[str, np.ndarray]]:
    """Render one pose with several backends; wall time and agreement with the first backend.

    Returns a pandas DataFrame (backend, seconds, and the relative L2 difference to the first
    backend: of channel 0 over the whole image and over ``field``, and of the other channels
    together over ``field``; channels are compared separately because their units differ) and the
    images by backend (``(C, H, W)`` each). The first call of a backend in a process includes its
    one-time start-up (library loading), so each backend is run once before it is timed.
    """
    import time

    import pandas as pd

    rows, images = [], {}
    for name in backends:
        proj = get_projector(name)
        proj.project(channels, geometry.resized(8), [pose], isocenter)  # warm-up on a tiny detector
        t0 = time.perf_counter()
        images[name] = proj.project(channels, geometry, [pose], isocenter)[0]
        rows.append({"backend": name, "device": getattr(proj, "device", "cpu"), "seconds": time.perf_counter() - t0})
    ref = images[backends[0]]
    sel = np.ones(ref.shape[-2:], bool) if field is None else field

    def rel(a, b):
        norm = np.linalg.norm(b)
        return float(np.linalg.norm(a - b) / norm) if norm > 0 else float("nan")

    for row in rows:
        img = images[row["backend"]]
        row["rel_l2_ch0"] = rel(img[0], ref[0])
        row["rel_l2_ch0_in_field"] = rel(img[0][sel], ref[0][sel])
        row["rel_l2_other_in_field"] = rel(img[1:][:, sel], ref[1:][:, sel]) if len(ref) > 1 else float("nan")
    return pd.DataFrame(rows), images
