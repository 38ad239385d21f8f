"""Figures of radiographs: the projection geometry, radiograph grids, spectra, preprocessing, image grids.

Radiographs follow the display convention of :mod:`xrlib.drr.geometry`, with axes in millimetres on
the detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from xrlib.core.ct import Volume
from xrlib.drr.geometry import Geometry, Pose, rotation_matrix
from xrlib.plots.volumes import LEFT_COLOR, RIGHT_COLOR

def geometry_diagram(geometry: Geometry, ct: Volume, alphas: Sequence[float] = (-20.0, 0.0, 20.0)) -> plt.Figure:
    """Top view (looking from the feet) of source, isocenter, detector and the rotated CT box."""
    fig, ax = plt.subplots(figsize=(9, 8), constrained_layout=True)
    c = ct.center
    corners = np.array([[i, j, 0] for i in (-0.5, ct.shape_ijk[0] - 0.5) for j in (-0.5, ct.shape_ijk[1] - 0.5)])
    world = corners @ ct.index_to_world[:3, :3].T + np.asarray(ct.origin) - c
    hull = world[[0, 1, 3, 2, 0], :2]
    for a, ls in zip(alphas, ("--", "-", ":")):
        r = rotation_matrix(Pose(alpha=a))[:2, :2]
        box = hull @ r.T
        ax.plot(box[:, 0], box[:, 1], ls=ls, color="tab:blue", label=f"CT box at α = {a:+g}°")
    src_y, det_y = geometry.sid, geometry.sid - geometry.sdd
    half = geometry.width * geometry.pitch / 2
    ax.plot([-half, half], [det_y, det_y], color="k", lw=4, label=f"detector ({geometry.width} px × {geometry.pitch:g} mm)")
    ax.plot(0, src_y, marker="*", ms=16, color="tab:red", label="source")
    ax.plot(0, 0, marker="+", ms=14, color="k", label="isocenter (CT centre)")
    for u in (-half, half):
        ax.plot([0, u], [src_y, det_y], color="tab:red", lw=0.6, alpha=0.6)
    ax.annotate("", xy=(120 * np.sin(np.deg2rad(20)), -120 * np.cos(np.deg2rad(20))), xytext=(0, -120),
                arrowprops=dict(arrowstyle="->", connectionstyle="arc3,rad=0.3", color="tab:green"))
    ax.text(60, -150, "α > 0", color="tab:green")
    ax.text(-half, det_y - 60, "anterior (detector side)", fontsize=9)
    ax.text(-half, src_y + 40, "posterior (source side)", fontsize=9)
    ax.set(xlabel="x (mm, → patient left)", ylabel="y (mm, ↑ posterior)", aspect="equal",
           title=f"PA geometry: SID {geometry.sid:g} mm, SDD {geometry.sdd:g} mm")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    return fig


def detector_extent(geometry: Geometry) -> list[float]:
    """imshow extent (mm on the detector, centre at 0; superior up)."""
    w, h = geometry.width * geometry.pitch / 2, geometry.height * geometry.pitch / 2
    return [-w, w, -h, h]


def show_radiograph(ax, image: np.ndarray, geometry: Geometry, masks: Mapping[str, np.ndarray] | None = None,
                    title: str = "", vmin=None, vmax=None, axis_labels: bool = True):
    """Draw one radiograph with optional mask contours (name → mask; colours by order)."""
    ext = detector_extent(geometry)
    ax.imshow(image, cmap="gray", extent=ext, vmin=vmin, vmax=vmax)
    colors = ("tab:red", "tab:blue", "cyan", "yellow", LEFT_COLOR, RIGHT_COLOR)
    for (name, m), col in zip((masks or {}).items(), colors):
        if m is not None and m.any():
            ax.contour(m, [0.5], colors=col, linewidths=0.8, extent=ext, origin="upper")
    ax.set_title(title, fontsize=9)
    if axis_labels:
        ax.set(xlabel="u (mm, → patient left)", ylabel="v (mm, superior ↑)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def radiograph_grid(radiographs, geometry: Geometry, ncols: int = 7, key=lambda rg: f"α = {rg.meta['pose']['alpha']:+g}°") -> plt.Figure:
    """A grid of radiographs (their display image when rendered with ``display=True``) with their
    clavicle masks (left orange, right cyan)."""
    n = len(radiographs)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False, constrained_layout=True)
    for ax, rg in zip(axes.flat, radiographs):
        ext = detector_extent(geometry)
        ax.imshow(rg.image if rg.display is None else rg.display, cmap="gray", extent=ext)
        for m, col in ((rg.mask_left, LEFT_COLOR), (rg.mask_right, RIGHT_COLOR)):
            if m is not None and m.any():
                ax.contour(m, [0.5], colors=col, linewidths=0.7, extent=ext, origin="upper")
        ax.set_title(key(rg), fontsize=9)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.supxlabel("u (mm on the detector, → patient left)")
    fig.supylabel("v (mm on the detector, superior ↑)")
    return fig


def spectrum_plot(spectrum, ax=None, label: str | None = None) -> plt.Figure:
    """Tube spectrum: photons per mm² per mAs at 1 m, per keV bin."""
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 3.5), constrained_layout=True)
    ax = ax or fig.gca()
    e = spectrum.energies_kev
    ax.step(e, spectrum.fluence / 100.0, where="mid", label=label)
    ax.axvline(spectrum.mean_energy, color="tab:red", ls="--", lw=1, label=f"mean {spectrum.mean_energy:.1f} keV")
    ax.set(xlabel="photon energy (keV)", ylabel="photons / (mm² · mAs) at 1 m, per bin", title="tube spectrum")
    ax.legend(fontsize=8)
    return fig


def preprocessing_pair(example: Mapping) -> plt.Figure:
    """Detector image (mm) next to the network input (px), from :func:`xrlib.data.recipes.preprocessing_example`."""
    g = example["geometry"]
    size = example["image"].shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    show_radiograph(axes[0], example["detector"], g, {"clavicles": example["detector_mask"]},
                    title=f"detector {g.height}×{g.width} px at {g.pitch:.3g} mm, α = {example['alpha']:+g}°")
    axes[1].imshow(example["image"], cmap="gray", vmin=0, vmax=1)
    if example["mask"] is not None and example["mask"].any():
        axes[1].contour(example["mask"], [0.5], colors="tab:red", linewidths=0.8)
    axes[1].set(title=f"network input {size}×{size} px", xlabel="column (px)", ylabel="row (px)")
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], masks: Sequence[np.ndarray | None] | None = None,
               ncols: int = 6, extent_mm: float | None = None, unit: str = "px") -> plt.Figure:
    """Generic grid of 2-D images with optional mask contours; axes in ``unit``."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False, constrained_layout=True)
    masks = masks or [None] * n
    for ax, img, t, m in zip(axes.flat, images, titles, masks):
        ext = None if extent_mm is None else [-extent_mm / 2, extent_mm / 2, -extent_mm / 2, extent_mm / 2]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, extent=ext)
        if m is not None and m.any():
            kw = {} if ext is None else {"extent": ext, "origin": "upper"}  # no extent: pixel coordinates
            ax.contour(m, [0.5], colors="tab:red", linewidths=0.7, **kw)
        ax.set_title(t, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.supxlabel(f"column ({unit})")
    fig.supylabel(f"row ({unit})")
    return fig


# ------------------------------------------------------------------ training and evaluation figures

