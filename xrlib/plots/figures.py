"""Figures of the book: CT views, clavicle views, geometry, radiograph grids and timings.

Every function returns a :class:`matplotlib.figure.Figure` with labelled axes and units. CT views
are shown in radiological orientation (patient's right on the left, superior at the top);
radiographs in the display convention of :mod:`xrlib.drr.geometry`, with axes in millimetres on the
detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from xrlib.core.ct import Volume  # noqa: E402
from xrlib.drr.geometry import Geometry, Pose, rotation_matrix  # noqa: E402

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


def ct_orthoslices(ct: Volume, labels: Volume | None = None, clavicle_labels=(73, 74)) -> plt.Figure:
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


def cohort_montage(subjects: Sequence[tuple[str, Volume, Volume]], ncols: int = 4, clavicle_labels=(73, 74)) -> plt.Figure:
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
    """A grid of radiographs with their clavicle masks (left orange, right cyan)."""
    n = len(radiographs)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False, constrained_layout=True)
    for ax, rg in zip(axes.flat, radiographs):
        ext = detector_extent(geometry)
        ax.imshow(rg.image, cmap="gray", extent=ext)
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


def bar_timings(labels: Sequence[str], seconds: Sequence[float], title: str, ylabel: str = "time (s)") -> plt.Figure:
    """A bar chart of timings, with the values printed on the bars."""
    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    bars = ax.bar(labels, seconds, color="tab:blue")
    ax.bar_label(bars, fmt="%.2f")
    ax.set(ylabel=ylabel, title=title)
    return fig


def preprocessing_pair(example: Mapping) -> plt.Figure:
    """Detector image (mm) next to the network input (px), from :func:`xrlib.data.datasets.preprocessing_example`."""
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

MODEL_COLORS = {"TorchXRayVision": "black", "U-Net(Real)": "tab:red", "U-Net(Real+Syn_cen)": "tab:blue",
                "U-Net(Real+Syn_all)": "tab:green"}


def _model_color(name: str, i: int) -> str:
    return MODEL_COLORS.get(name, f"C{i}")


def learning_curves(histories: Mapping[str, "object"]) -> plt.Figure:
    """Training loss, validation loss and validation Dice per epoch for each model."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True)
    for i, (name, h) in enumerate(histories.items()):
        c = _model_color(name, i)
        axes[0].plot(h["epoch"], h["train_loss"], color=c, label=f"{name} train")
        axes[0].plot(h["epoch"], h["val_loss"], color=c, ls="--", label=f"{name} val")
        axes[1].plot(h["epoch"], h["val_dice"], color=c, label=name)
        best = int(np.argmax(h["val_dice"].to_numpy()))
        axes[1].plot(h["epoch"].iloc[best], h["val_dice"].iloc[best], "o", color=c)
    axes[0].set(xlabel="epoch", ylabel="loss (Dice loss, lower is better)", title="loss")
    axes[1].set(xlabel="epoch", ylabel="validation Dice (threshold 0.5)", title="validation Dice (dot: best epoch)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=8)
    return fig


def group_boxplots(df, metric: str = "dice", groups: Sequence[str] = (), by: str = "group",
                   ylabel: str = "Dice", title: str = "") -> plt.Figure:
    """Boxplots (Tukey whiskers: 1.5 IQR) of a metric per group for every model, side by side."""
    models = list(dict.fromkeys(df["model"]))
    groups = list(groups) or list(dict.fromkeys(df[by]))
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(groups) * max(1, len(models)) / 2), 4.5), constrained_layout=True)
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        data = [df[(df["model"] == m) & (df[by] == g)][metric].dropna().to_numpy() for g in groups]
        pos = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, whis=1.5, patch_artist=True, showfliers=True,
                        flierprops=dict(markersize=3))
        for box in bp["boxes"]:
            box.set(facecolor=_model_color(m, i), alpha=0.45)
        ax.plot([], [], color=_model_color(m, i), lw=8, alpha=0.45, label=m)
    ax.set_xticks(np.arange(len(groups)), [str(g) for g in groups])
    ax.set(xlabel="α group" if by == "group" else "α (deg)", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return fig


def dice_vs_alpha_plot(curve) -> plt.Figure:
    """Mean Dice per α with its (subject-clustered bootstrap) confidence band, for each model."""
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for i, (m, g) in enumerate(curve.groupby("model", sort=False)):
        g = g.sort_values("alpha")
        c = _model_color(m, i)
        ax.plot(g["alpha"], g["mean"], "-o", ms=3, color=c, label=m)
        ax.fill_between(g["alpha"], g["lo"], g["hi"], color=c, alpha=0.15)
    ax.set(xlabel="patient rotation α (deg)", ylabel="mean Dice (band: 95% bootstrap CI over subjects)",
           title="Dice versus patient rotation")
    ax.legend(fontsize=8)
    return fig


def contour_overlays(images: np.ndarray, truth: np.ndarray, preds: Mapping[str, np.ndarray], titles: Sequence[str],
                     dices: Mapping[str, Sequence[float]], ncols: int = 3) -> plt.Figure:
    """Test images with the ground-truth contour (red) and each model's predicted contour (prob ≥ 0.5)."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.6 * nrows), squeeze=False, constrained_layout=True)
    colors = ["tab:blue", "cyan", "yellow", "magenta", "white"]
    for k, ax in enumerate(axes.flat[:n]):
        ax.imshow(images[k], cmap="gray", vmin=0, vmax=1)
        if truth[k].any():
            ax.contour(truth[k], [0.5], colors="red", linewidths=1.0)
        for (name, p), col in zip(preds.items(), colors):
            if (p[k] >= 0.5).any():
                ax.contour(p[k], [0.5], colors=col, linewidths=0.8)
        scores = " / ".join(f"{dices[name][k]:.2f}" for name in preds)
        ax.set_title(f"{titles[k]}\nDice {scores}", fontsize=8)
        ax.set(xlabel="column (px)", ylabel="row (px)")
    for ax in axes.flat[n:]:
        ax.axis("off")
    handles = [matplotlib.lines.Line2D([], [], color="red", label="ground truth")]
    handles += [matplotlib.lines.Line2D([], [], color=c, label=m) for m, c in zip(preds, colors)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    return fig
