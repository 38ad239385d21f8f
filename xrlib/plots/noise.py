"""Figures of the noise chapter: the dose axis, the window control, std maps, SAR vs dose, CMR matrices, Z-test matrix, NPS, seed spread, adaptive rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xrlib.eval.robustness import band_labels


def std_map_figure(maps: Mapping, pitch_mm: float) -> plt.Figure:
    """The clean −log image and the per-pixel noise std at each dose (detector grid, mm axes)."""
    doses = [k for k in maps if k != "clean"]
    fig, axes = plt.subplots(1, 1 + len(doses), figsize=(4.2 * (1 + len(doses)), 4), constrained_layout=True)
    h, w = maps["clean"].shape
    ext = [0, w * pitch_mm, h * pitch_mm, 0]
    im = axes[0].imshow(maps["clean"], cmap="gray", extent=ext)
    fig.colorbar(im, ax=axes[0], label="−log(I/I₀)")
    axes[0].set(title="noise-free image (clean)", xlabel="detector x (mm)", ylabel="detector y (mm)")
    for ax, d in zip(axes[1:], doses):
        im = ax.imshow(maps[d], cmap="magma", extent=ext)
        fig.colorbar(im, ax=ax, label="std of −log(I/I₀) over realisations")
        ax.set(title=f"per-pixel noise std at {d:g} mAs", xlabel="detector x (mm)", ylabel="detector y (mm)")
    return fig


def sar_vs_dose(sar_df: pd.DataFrame, arm: str = "rerendered") -> plt.Figure:
    """SAR vs dose per clean band (panels) and model (lines), as paper 003's Fig. 3 (log dose axis)."""
    d = sar_df[sar_df["arm"] == arm]
    bands = list(dict.fromkeys(d["band"]))
    fig, axes = plt.subplots(1, len(bands), figsize=(4.5 * len(bands), 3.8), constrained_layout=True, squeeze=False)
    for ax, band in zip(axes[0], bands):
        for i, (model, g) in enumerate(d[d["band"] == band].groupby("model", sort=False)):
            g = g.sort_values("budget")
            ax.plot(g["budget"], g["sar"], "o-", color=f"C{i}", label=f"{model}")
        n = d[d["band"] == band].groupby("model")["n_clean"].max()
        ax.set(xscale="log", ylim=(-0.03, 1.03), xlabel="dose (mAs, log scale)", ylabel="SAR (share leaving the band)",
               title=f"clean band {band} (n_clean ≤ {int(n.max()) if len(n) else 0})")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"SAR vs dose ({arm} noise); dose decreases to the right")
    return fig


def cmr_matrices(cmr_df: pd.DataFrame, doses: Sequence[float], model: str) -> plt.Figure:
    """CMR(i, j) of one model at two doses (rows: noisy band i, columns: clean band j), as paper 003's Fig. 4."""
    labels = band_labels()
    fig, axes = plt.subplots(1, len(doses), figsize=(4.6 * len(doses), 4), constrained_layout=True, squeeze=False)
    for ax, dose in zip(axes[0], doses):
        g = cmr_df[(cmr_df["model"] == model) & np.isclose(cmr_df["budget"], dose)]
        mat = g.pivot_table(index="threatened_band", columns="clean_band", values="cmr", dropna=False)
        mat = mat.reindex(index=labels, columns=labels)
        im = ax.imshow(mat.to_numpy(float), vmin=0, vmax=1, cmap="Blues")
        for (i, j), v in np.ndenumerate(mat.to_numpy(float)):
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(3), labels, fontsize=8)
        ax.set_yticks(range(3), labels, fontsize=8)
        ax.set(xlabel="clean prediction band j", ylabel="noisy prediction band i", title=f"{model} @ {dose:g} mAs")
    fig.colorbar(im, ax=axes[0].tolist(), label="CMR(i, j) = P(noisy in i | clean in j)")
    return fig


def z_matrix(z_df: pd.DataFrame) -> plt.Figure:
    """Z of every CMR entry (inserted vs re-rendered): rows = model × dose, columns = (clean band → noisy band)."""
    d = z_df.copy()
    d["entry"] = d["clean_band"] + " → " + d["threatened_band"]
    d["row"] = d["model"] + " @ " + d["budget"].map(lambda b: f"{b:g} mAs")
    mat = d.pivot_table(index="row", columns="entry", values="z", sort=False, dropna=False)
    fig, ax = plt.subplots(figsize=(1.1 * mat.shape[1] + 3, 0.35 * mat.shape[0] + 2), constrained_layout=True)
    im = ax.imshow(mat.to_numpy(float), cmap="coolwarm", vmin=-3, vmax=3, aspect="auto")
    for (i, j), v in np.ndenumerate(mat.to_numpy(float)):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, fontweight="bold" if abs(v) >= 1.96 else None)
    ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(mat.shape[0]), mat.index, fontsize=7)
    ax.set(xlabel="CMR entry (clean band → noisy band)", ylabel="model @ dose",
           title="two-proportion Z, inserted vs re-rendered (|Z| ≥ 1.96 bold)")
    fig.colorbar(im, ax=ax, label="Z")
    return fig


def nps_figure(nps_df: pd.DataFrame) -> plt.Figure:
    """Radially averaged NPS of the two arms at each validation dose (log NPS axis)."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for i, (dose, g) in enumerate(nps_df.groupby("dose")):
        for arm, ls in (("rerendered", "-"), ("inserted", "--")):
            h = g[g["arm"] == arm]
            ax.plot(h["frequency"], h["nps"], ls, color=f"C{i}", label=f"{arm} @ {dose:g} mAs")
    ax.set(yscale="log", xlabel="spatial frequency (cycles per detector pixel)", ylabel="NPS (−log units², per bin)",
           title="noise power spectrum, central patch")
    ax.legend(fontsize=7)
    return fig


def seed_spread(per_seed: pd.DataFrame) -> plt.Figure:
    """SAR (best band) of each repeated training at each dose, and its clean Dice (paper 003's Fig. 6)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for i, (dose, g) in enumerate(per_seed.groupby("budget")):
        axes[0].scatter(np.full(len(g), i) + np.linspace(-0.1, 0.1, len(g)), g["sar"], label=f"{dose:g} mAs")
    doses = sorted(per_seed["budget"].unique())
    axes[0].set_xticks(range(len(doses)), [f"{d:g} mAs" for d in doses])
    axes[0].set(ylabel="SAR of band Dice ≥ 0.8", xlabel="dose", ylim=(-0.03, 1.03), title="SAR per repeated training")
    clean = per_seed.drop_duplicates("model")
    axes[1].bar(range(len(clean)), clean["clean_dice"])
    axes[1].set_xticks(range(len(clean)), clean["model"], rotation=20, ha="right", fontsize=7)
    axes[1].set(ylabel="mean clean Dice (realistic test images)", xlabel="training", title="clean Dice per seed")
    return fig


def adaptive_rounds(per_model: pd.DataFrame) -> plt.Figure:
    """SAR per round of adaptive training, per clean band (lines) and dose (panels), against the control
    (random noisy samples, same count: dashed), and the clean Dice per round — paper 003's Fig. 7."""
    doses = sorted(per_model["budget"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(doses) + 1, figsize=(4.4 * (len(doses) + 1), 3.8), constrained_layout=True)
    styles = {"adaptive": "-", "augment": "--"}
    names = {"adaptive": "adaptive", "augment": "noise augmentation (control)"}

    def chain(d: pd.DataFrame, c: str) -> pd.DataFrame:  # round 0 (the base model) starts both chains
        return d[(d["chain"] == c) | (d["chain"] == "base")].sort_values("iteration")

    for ax, dose in zip(axes, doses):
        d = per_model[np.isclose(per_model["budget"], dose)]
        for i, band in enumerate(dict.fromkeys(d["band"])):
            for c, ls in styles.items():
                g = chain(d[d["band"] == band], c)
                if (g["chain"] == c).any() and g["sar"].notna().any():  # a band no clean prediction is in has no SAR
                    ax.plot(g["iteration"], g["sar"], ls, marker="o", color=f"C{i}",
                            label=f"clean {band} (n = {'/'.join(str(int(n)) for n in g['n_clean'])}), {names[c]}")
        ax.set(xlabel="round of training (0 = U-Net(Real+Syn_all))", ylabel="SAR on the test images",
               ylim=(-0.03, 1.03), title=f"SAR per round, re-rendered noise at {dose:g} mAs")
        ax.set_xticks(sorted(per_model["iteration"].unique()))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    clean = per_model.drop_duplicates("model")
    for c, ls in styles.items():
        g = chain(clean, c)
        if (g["chain"] == c).any():
            axes[-1].plot(g["iteration"], g["clean_dice"], ls, marker="o", color="k", label=names[c])
    axes[-1].set(xlabel="round of training", ylabel="mean Dice, clean (noise-free) test images",
                 title="the price: clean Dice per round")
    axes[-1].set_xticks(sorted(per_model["iteration"].unique()))
    axes[-1].legend(fontsize=7)
    axes[-1].grid(alpha=0.3)
    return fig


def dose_axis_figure(grid_table: pd.DataFrame, dose_tab: pd.DataFrame) -> plt.Figure:
    """Dose, quanta per input pixel and CNR side by side: validation Dice per model vs dose (the grid's
    search), quanta per network-input pixel (open field, behind the clavicle) and clavicle CNR at the input."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    for i, (model, g) in enumerate(grid_table.groupby("model", sort=False)):
        axes[0].plot(g["dose"], g["dice"], "o-", color=f"C{i}", label=model)
        axes[0].axhline(0.5 * g["clean_dice"].iloc[0], color=f"C{i}", ls=":", lw=1)
    axes[0].set(xscale="log", ylim=(-0.03, 1.03), xlabel="dose (mAs, log scale)", ylabel="mean validation Dice",
                title="grid search on validation subjects (dotted: half clean)")
    axes[0].legend(fontsize=7)
    axes[1].plot(dose_tab["dose_mas"], dose_tab["flat_quanta"], "o-", label="open field")
    axes[1].plot(dose_tab["dose_mas"], dose_tab["clavicle_quanta"], "s-", label="behind the clavicle")
    axes[1].set(xscale="log", yscale="log", xlabel="dose (mAs, log scale)",
                ylabel="detected quanta per input pixel", title="quanta per network-input pixel (test images)")
    axes[1].legend(fontsize=7)
    axes[2].plot(dose_tab["dose_mas"], dose_tab["cnr"], "o-")
    axes[2].set(xscale="log", yscale="log", xlabel="dose (mAs, log scale)", ylabel="clavicle CNR at the input",
                title="clavicle contrast-to-noise ratio")
    for ax in axes:
        ax.invert_xaxis()
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("The dose axis in detected quanta and CNR; dose decreases to the right")
    return fig


def window_control_figure(win: pd.DataFrame) -> plt.Figure:
    """Mean test Dice vs dose per model: noisy image with its own window (solid) and with the noise-free
    image's window (dashed, the control); the clean Dice dotted."""
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for i, (model, g) in enumerate(win.groupby("model", sort=False)):
        g = g.sort_values("budget")
        ax.plot(g["budget"], g["dice_own_window"], "o-", color=f"C{i}", label=f"{model}: own window")
        ax.plot(g["budget"], g["dice_clean_window"], "s--", color=f"C{i}", label=f"{model}: noise-free window")
        ax.axhline(g["dice_clean"].iloc[0], color=f"C{i}", ls=":", lw=1)
    ax.set(xscale="log", ylim=(-0.03, 1.03), xlabel="dose (mAs, log scale)", ylabel="mean test Dice",
           title="window control: noise vs windowing (dotted: clean)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return fig
