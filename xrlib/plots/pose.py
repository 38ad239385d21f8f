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
