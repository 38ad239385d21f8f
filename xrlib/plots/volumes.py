"""Figures of CT volumes: orthogonal slices, HU histogram, cohort montage, clavicle MIPs.

CT views are shown in radiological orientation (patient's right on the left, superior at the top),
with axes in millimetres of the LPS frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

from xrlib.core.ct import CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL, Volume

CLAVICLE_LABELS = (CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL)

HU_WINDOW = (-1000.0, 1000.0)
LEFT_COLOR, RIGHT_COLOR = "tab:orange", "tab:cyan"


def as_lps(vol: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Array reoriented so that index axes run along +L, +P, +S, with its spacing and origin.

    Returned array is indexed ``[s, p, l]`` (numpy order), spacing and origin in ``(l, p, s)``.
    """
    img = sitk.DICOMOrient(vol.to_sitk(), "LPS")
    return sitk.GetArrayFromImage(img), np.array(img.GetSpacing()), np.array(img.GetOrigin())


def _extent(origin, spacing, n, axis):
    lo = origin[axis] - spacing[axis] / 2
    return lo, lo + n * spacing[axis]


def coronal(vol: Volume, y_mm: float | None = None) -> tuple[np.ndarray, list[float]]:
    """Coronal slice (superior up, patient's right on the left) and its imshow extent (mm)."""
    arr, sp, org = as_lps(vol)
    j = arr.shape[1] // 2 if y_mm is None else int(np.clip(round((y_mm - org[1]) / sp[1]), 0, arr.shape[1] - 1))
    x0, x1 = _extent(org, sp, arr.shape[2], 0)
    z0, z1 = _extent(org, sp, arr.shape[0], 2)
    return arr[::-1, j, :], [x0, x1, z0, z1]


def ct_orthoslices(ct: Volume, labels: Volume | None = None, clavicle_labels=CLAVICLE_LABELS) -> plt.Figure:
    """Axial (through the clavicles), coronal and sagittal slices of a CT with clavicle contours."""
    arr, sp, org = as_lps(ct)
    lab = as_lps(labels)[0] if labels is not None else None
    if lab is not None and np.isin(lab, clavicle_labels).any():
        k, j, _ = (int(np.median(a)) for a in np.nonzero(np.isin(lab, clavicle_labels)))
    else:
        k, j = arr.shape[0] * 3 // 4, arr.shape[1] // 2
    i = arr.shape[2] // 2
    x, y, z = (_extent(org, sp, n, ax) for ax, n in ((0, arr.shape[2]), (1, arr.shape[1]), (2, arr.shape[0])))
    views = [
        ("axial", arr[k], lab[k] if lab is not None else None, [*x, y[1], y[0]], "x (mm, → patient left)", "y (mm, ↓ posterior)"),
        ("coronal", arr[::-1, j], lab[::-1, j] if lab is not None else None, [*x, *z], "x (mm, → patient left)", "z (mm, superior ↑)"),
        ("sagittal", arr[::-1, :, i], lab[::-1, :, i] if lab is not None else None, [*y, *z], "y (mm, → posterior)", "z (mm, superior ↑)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), constrained_layout=True)
    for ax, (name, img, lb, ext, xl, yl) in zip(axes, views):
        im = ax.imshow(img, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1], extent=ext, origin="upper")
        if lb is not None:
            for val, col in zip(clavicle_labels, (LEFT_COLOR, RIGHT_COLOR)):
                if (lb == val).any():
                    ax.contour(lb == val, [0.5], colors=col, linewidths=1.0, extent=ext, origin="upper")
        ax.set(title=name, xlabel=xl, ylabel=yl)
    fig.colorbar(im, ax=axes, shrink=0.7, label="HU")
    return fig


def hu_histogram(ct: Volume, thresholds: Sequence[float] = (), names: Sequence[str] = ()) -> plt.Figure:
    """Histogram of HU inside the reconstruction circle, with material thresholds marked."""
    vals = ct.array[ct.array > -1024.5]
    fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    ax.hist(vals.ravel()[:: max(1, vals.size // 2_000_000)], bins=300, range=(-1100, 2000), color="0.3", log=True)
    for t in thresholds:
        ax.axvline(t, color="tab:red", ls="--", lw=1)
    for (lo, hi), n in zip(zip((-1100, *thresholds), (*thresholds, 2000)), names):
        ax.text((lo + hi) / 2, 0.95, n, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)
    ax.set(xlabel="CT number (HU)", ylabel="voxels (sampled, log scale)", title="HU histogram")
    return fig


def cohort_montage(subjects: Sequence[tuple[str, Volume, Volume]], ncols: int = 4, clavicle_labels=CLAVICLE_LABELS) -> plt.Figure:
    """Coronal CT slices through the clavicles of several subjects.

    Contours: each clavicle label projected along y (its full outline in a coronal view), which a
    single slice through a curved bone would not show.
    """
    n = len(subjects)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), squeeze=False, constrained_layout=True)
    for ax, (sid, ct, lab) in zip(axes.flat, subjects):
        clav = np.isin(lab.array, clavicle_labels)
        y = None
        if clav.any():
            centre_idx = np.array([np.median(a) for a in np.nonzero(clav)])[::-1]  # (i, j, k)
            y = (lab.index_to_world[:3, :3] @ centre_idx + lab.origin)[1]
        img, ext = coronal(ct, y)
        ax.imshow(img, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1], extent=ext)
        lab_lps = as_lps(lab)[0]
        for val, col in zip(clavicle_labels, (LEFT_COLOR, RIGHT_COLOR)):
            m = (lab_lps == val).any(axis=1)[::-1]  # the whole clavicle, projected along y
            if m.any():
                ax.contour(m, [0.5], colors=col, linewidths=0.8, extent=ext, origin="upper")
        ax.set(title=sid, xlabel="x (mm, → patient left)", ylabel="z (mm, superior ↑)")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig


def clavicle_mips(left: Volume, right: Volume) -> plt.Figure:
    """Maximum-intensity projections of the clavicle masks along the three LPS axes."""
    L, sp, org = as_lps(left)
    R = as_lps(right)[0]
    x, y, z = (_extent(org, sp, n, ax) for ax, n in ((0, L.shape[2]), (1, L.shape[1]), (2, L.shape[0])))
    views = [
        ("coronal MIP (along y)", 1, [*x, *z], "x (mm, → patient left)", "z (mm, superior ↑)", True),
        ("axial MIP (along z)", 0, [*x, y[1], y[0]], "x (mm, → patient left)", "y (mm, ↓ posterior)", False),
        ("sagittal MIP (along x)", 2, [*y, *z], "y (mm, → posterior)", "z (mm, superior ↑)", True),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    for ax, (title, axis, ext, xl, yl, flip) in zip(axes, views):
        rgb = np.zeros((*np.max(L, axis=axis).shape, 3))
        rgb[np.max(L, axis=axis) > 0] = matplotlib.colors.to_rgb(LEFT_COLOR)
        rgb[np.max(R, axis=axis) > 0] = matplotlib.colors.to_rgb(RIGHT_COLOR)
        ax.imshow(rgb[::-1] if flip else rgb, extent=ext, aspect="equal")
        ax.set(title=title, xlabel=xl, ylabel=yl)
    axes[0].legend(handles=[matplotlib.patches.Patch(color=LEFT_COLOR, label="left clavicle"),
                            matplotlib.patches.Patch(color=RIGHT_COLOR, label="right clavicle")], loc="lower right")
    return fig


