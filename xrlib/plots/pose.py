"""Figures of the worst-case pose chapter: Dice landscape with the search path, worst-pose radiograph,
worst-case Dice per model and budget."""

from __future__ import annotations

import matplotlib.lines
import matplotlib.pyplot as plt
import numpy as np

from xrlib.plots.results import _model_color


def pose_landscape(alphas: np.ndarray, tilts: np.ndarray, dice: np.ndarray, path: np.ndarray, budget: float,
                   title: str = "") -> plt.Figure:
    """Dice over (α, tilt) at zero shift (``dice`` ``(A, T)``) with the search path (``(K, 5)`` poses: α, tilt
    shown; the shift of each iterate is not shown) and the budget's box."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    da = (alphas[1] - alphas[0]) / 2 if len(alphas) > 1 else 1.0
    dt = (tilts[1] - tilts[0]) / 2 if len(tilts) > 1 else 0.5
    im = ax.imshow(dice.T, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                   extent=[alphas[0] - da, alphas[-1] + da, tilts[0] - dt, tilts[-1] + dt])
    fig.colorbar(im, ax=ax, label="Dice (prediction vs truth at that pose)")
    if len(path):
        ax.plot(path[:, 0], path[:, 1], "-o", color="white", ms=4, lw=1.2, label="search (grid start → steps)")
        ax.plot(path[0, 0], path[0, 1], "s", color="orange", ms=8, label="grid start")
    b = float(budget)
    ax.add_patch(plt.Rectangle((-b, -b / 4), 2 * b, b / 2, fill=False, ls="--", color="red", label=f"budget {b:g}"))
    ax.set(xlabel="α, rotation about the SI axis (deg)", ylabel="tilt about the LR axis (deg)", title=title)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def worst_pose_view(clean: np.ndarray, clean_truth: np.ndarray, clean_prob: np.ndarray, worst: np.ndarray,
                    worst_truth: np.ndarray, worst_prob: np.ndarray, titles: tuple[str, str]) -> plt.Figure:
    """The neutral pose and the worst pose, each with the truth (red) and the prediction (cyan) contours."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8), constrained_layout=True)
    for ax, img, t, p, title in zip(axes, (clean, worst), (clean_truth, worst_truth), (clean_prob, worst_prob), titles):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        if t.any():
            ax.contour(t, [0.5], colors="red", linewidths=1.0)
        if (p >= 0.5).any():
            ax.contour(p, [0.5], colors="cyan", linewidths=0.9)
        ax.set(title=title, xlabel="column (px)", ylabel="row (px)")
    handles = [matplotlib.lines.Line2D([], [], color="red", label="truth (re-rendered at the pose)"),
               matplotlib.lines.Line2D([], [], color="cyan", label="prediction (p ≥ 0.5)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, -0.04))
    return fig


def worst_case_dice(table) -> plt.Figure:
    """Mean Dice per model (lines) over the budget (``table``: models × budgets, from ``worst_case_table``)."""
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for i, (model, row) in enumerate(table.iterrows()):
        ax.plot(row.index.astype(float), row.to_numpy(float), "-o", color=_model_color(str(model), i), label=str(model))
    ax.set(xlabel="pose budget b (|α| ≤ b°, |tilt| ≤ b/4°, |shift| ≤ b mm)", ylabel="mean Dice at the worst pose found",
           ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def gradient_check_bars(check, rtol: float) -> plt.Figure:
    """Relative error of autograd vs central differences per pose parameter (``check``: rows of
    :func:`xrlib.attacks.pose.gradient_check` with a ``renderer`` column), with the tolerance line."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    names = list(dict.fromkeys(check["renderer"]))
    params = list(dict.fromkeys(check["param"]))
    w = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        c = check[check["renderer"] == name].set_index("param").reindex(params)
        ax.bar(np.arange(len(params)) + (i - (len(names) - 1) / 2) * w, c["rel_error"].to_numpy(float), w, label=name)
    ax.axhline(rtol, color="red", ls="--", lw=1, label=f"tolerance {rtol:.0%}")
    units = dict(zip(check["param"], check["unit"]))
    hs = dict(zip(check["param"], check["h"]))
    ax.set_xticks(np.arange(len(params)), [f"{p}\n(h = {hs[p]:g} {units[p]})" for p in params], fontsize=8)
    ax.set(yscale="log", xlabel="pose parameter (central-difference step h)",
           ylabel="|autograd − central| / |central| (relative)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return fig


def search_comparison(table) -> plt.Figure:
    """Mean Dice found by the gradient vs the random search per model and budget (``table`` from
    ``search_table``); below the diagonal the gradient search found worse poses."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6), constrained_layout=True)
    for i, (model, g) in enumerate(table.groupby("model", sort=False)):
        ax.scatter(g["dice_random"], g["dice_gradient"], color=_model_color(str(model), i), label=str(model))
        for _, r in g.iterrows():
            ax.annotate(f"b={r['budget']:g}", (r["dice_random"], r["dice_gradient"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean Dice at the worst pose, random search",
           ylabel="mean Dice at the worst pose, gradient search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def neutral_vs_dataset(chain_image: np.ndarray, dataset_image: np.ndarray, titles: tuple[str, str]) -> plt.Figure:
    """The chain's neutral-pose input, the dataset's α = 0 input of the same subject, and their difference."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), constrained_layout=True)
    for ax, img, title in zip(axes[:2], (chain_image, dataset_image), titles):
        im = ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set(title=title, xlabel="column (px)", ylabel="row (px)")
    fig.colorbar(im, ax=axes[:2], label="network input (0–1)", shrink=0.8)
    d = chain_image - dataset_image
    lim = float(np.abs(d).max()) or 1.0
    im = axes[2].imshow(d, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[2].set(title="chain − dataset", xlabel="column (px)", ylabel="row (px)")
    fig.colorbar(im, ax=axes[2], label="difference (input units)", shrink=0.8)
    return fig
