"""Figures of chapter 08: randomized samples, the simulator ladder against the Real surrogate, Dice bars, acquisition curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["plot_acquisition_curves", "plot_dice_bars", "plot_distances", "plot_learning_curves", "plot_pairs",
           "plot_randomized", "plot_simulators"]


def _img(ax, im, mask=None, title=""):
    ax.imshow(im, cmap="gray", vmin=0, vmax=1)
    if mask is not None and np.any(mask):
        ax.contour(mask, levels=[0.5], colors="tab:orange", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_randomized(image: np.ndarray, mask: np.ndarray, samples: Sequence[tuple[np.ndarray, np.ndarray, str]], cols: int = 6):
    """The original image and its domain-randomized samples ``(image, mask, label)``, masks as orange contours."""
    n = 1 + len(samples)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows), squeeze=False)
    _img(axes[0, 0], image, mask, "original")
    for ax, (im, m, label) in zip(axes.flat[1:], samples):
        _img(ax, im, m, label)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.suptitle("Domain randomization: samples of one training image (orange: the mask, moved with geometric effects)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_pairs(items: Sequence[tuple[np.ndarray, np.ndarray, str]], title: str, cols: int = 6):
    """A grid of ``(image, mask, label)`` panels (e.g. simulated images and their CycleGAN translations)."""
    rows = max(1, int(np.ceil(len(items) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows), squeeze=False)
    for ax, (im, m, label) in zip(axes.flat, items):
        _img(ax, im, m, label)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_simulators(images: Mapping[str, np.ndarray], reference: str, mask: np.ndarray | None = None, pixel_mm: float = 1.0):
    """One pose under each simulator and the Real surrogate (top) and the per-pixel difference to ``reference`` (bottom)."""
    names = list(images)
    fig, axes = plt.subplots(2, len(names), figsize=(2.4 * len(names), 5.0), squeeze=False)
    ref = images[reference]
    for j, name in enumerate(names):
        _img(axes[0, j], images[name], mask, name)
        d = images[name] - ref
        im = axes[1, j].imshow(d, cmap="RdBu_r", vmin=-0.5, vmax=0.5)
        axes[1, j].set_title(f"{name} − {reference}\nmean |Δ| = {np.abs(d).mean():.3f}", fontsize=8)
        axes[1, j].set_xlabel(f"x (px, {pixel_mm:.2f} mm/px)", fontsize=7)
        axes[1, j].set_ylabel("y (px)", fontsize=7)
        axes[1, j].tick_params(labelsize=6)
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="intensity difference (display units, [0, 1])")
    return fig


def plot_dice_bars(table: pd.DataFrame, title: str):
    """Mean Dice per model with its subject-clustered 95 % CI (bars), paper 001's Table 4 Dice as black markers.

    With a ``learned`` column (:func:`xrlib.studies.sim.study.table4` with the mean-mask baseline): the rows
    flagged not learned are hatched grey, the baseline is a grey bar and a dashed line."""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(table)), 3.4))
    x = np.arange(len(table))
    lab = [f"{r}\n{d} DR" if d != "—" else "mean mask\n(constant)" for r, d in zip(table["row"], table["DR"])]
    err = np.vstack([table["dice"] - table["dice_lo"], table["dice_hi"] - table["dice"]])
    learned = table["learned"].astype("boolean").fillna(False).to_numpy(bool) if "learned" in table else np.ones(len(table), bool)
    base = (table["DR"] == "—").to_numpy()
    colors = ["tab:gray" if b else ("tab:blue" if ok else "lightgray") for b, ok in zip(base, learned)]
    bars = ax.bar(x, table["dice"], yerr=np.nan_to_num(err), capsize=3, color=colors, alpha=0.8, label="this build (95 % CI)")
    for bar, b, ok in zip(bars, base, learned):
        if not b and not ok:
            bar.set_hatch("//")
    if base.any():
        ax.axhline(float(table.loc[base, "dice"].iloc[0]), color="gray", ls="--", lw=1,
                   label="mean-mask baseline (hatched: not learned)")
    ax.plot(x, table["paper_dice_360"], "k_", markersize=18, mew=2, label="paper 001, Table 4 (hip, 360 px)")
    ax.set_xticks(x, lab, fontsize=7)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_acquisition_curves(results: pd.DataFrame):
    """Mean Dice vs acquisition-shift scale per model (the acquisition threat's robustness curves)."""
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for model, g in results.groupby("model", sort=False):
        m = g.groupby("budget")["dice"].mean()
        ax.plot(m.index, m.values, "o-", label=model)
    ax.axvline(1.0, color="gray", ls=":", lw=1, label="the Real surrogate's own variability (1)")
    ax.set_xlabel("acquisition shift (× the documented ranges; 0 = the simulator's setting)")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_learning_curves(curves: pd.DataFrame, plateau: pd.DataFrame | None = None):
    """Validation Dice vs optimisation step per model (:func:`xrlib.studies.sim.fairness.learning_curves`); with
    ``plateau`` (columns ``model``, ``plateaued``) the legend says which curves plateaued."""
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    flags = {} if plateau is None else dict(zip(plateau["model"], plateau["plateaued"]))
    for model, g in curves.groupby("model", sort=False):
        tag = "" if model not in flags else (" (plateaued)" if flags[model] else " (still changing)")
        ax.plot(g["step"], g["val_dice"], "-", lw=1, label=f"{model}{tag}")
    if len(curves):
        last = curves["step"].max()
        if "lr_time" in curves:  # the window of the check: the last quarter of the learning-rate time (earliest row)
            start = min(float(g.loc[g["lr_time"] >= g["lr_time"].max() * 0.75, "step"].min())
                        for _, g in curves.groupby("model", sort=False))
        else:
            start = last * 0.75
        ax.axvspan(start, last, color="0.9", zorder=0, label="last quarter of lr time (plateau check)")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("validation Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def plot_distances(table: pd.DataFrame):
    """Each rung's distance to the Real surrogate (:func:`xrlib.studies.sim.distances.rung_distances`), one panel per
    measure, bars with ± 1 sd over the matched image pairs."""
    measures = list(dict.fromkeys(table["measure"]))
    units = {"histogram_w1": "grey-level W1 distance ([0, 1] units)", "spectrum_log_l2": "log10 power-spectrum RMS (decades)"}
    fig, axes = plt.subplots(1, len(measures), figsize=(3.4 * len(measures), 3.0), squeeze=False)
    for ax, m in zip(axes[0], measures):
        g = table[table["measure"] == m]
        ax.bar(np.arange(len(g)), g["mean"], yerr=np.nan_to_num(g["sd"].to_numpy()), capsize=3, color="tab:green", alpha=0.8)
        ax.set_xticks(np.arange(len(g)), g["domain"], fontsize=7)
        ax.set_xlabel("simulator")
        ax.set_ylabel(units.get(m, m), fontsize=7)
        ax.set_title(f"distance to the Real surrogate: {m}", fontsize=8)
    fig.tight_layout()
    return fig
