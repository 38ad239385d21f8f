"""Figures of results: timings, learning curves, metric boxplots, Dice vs α, contour overlays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

def bar_timings(labels: Sequence[str], seconds: Sequence[float], title: str, ylabel: str = "time (s)") -> plt.Figure:
    """A bar chart of timings, with the values printed on the bars."""
    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    bars = ax.bar(labels, seconds, color="tab:blue")
    ax.bar_label(bars, fmt="%.2f")
    ax.set(ylabel=ylabel, title=title)
    return fig


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
