"""Figures of the deformation + bias-field chapter: example rows, Dice vs ξ, Dice drop vs perceptibility."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["dice_vs_xi", "example_grid", "success_vs_p", "warped_grid"]


def warped_grid(ax, disp: np.ndarray, step: int = 8, scale: float = 1.0, color: str = "k") -> None:
    """Draw the sampling grid ``p + scale·D(p)`` of a displacement ``(2, S, S)`` (pixels; rows, columns) on ``ax``."""
    s = disp.shape[-1]
    r, c = np.mgrid[:s, :s].astype(float)
    rr, cc = r + scale * disp[0], c + scale * disp[1]
    for k in range(0, s, step):
        ax.plot(cc[k, :], rr[k, :], color=color, lw=0.6)
        ax.plot(cc[:, k], rr[:, k], color=color, lw=0.6)
    ax.set_xlim(-0.5, s - 0.5)
    ax.set_ylim(s - 0.5, -0.5)
    ax.set_aspect("equal")


def _contour(ax, mask, color, style="-"):
    if np.asarray(mask).max() > 0.5 > np.asarray(mask).min():
        ax.contour(np.asarray(mask, float), levels=[0.5], colors=[color], linewidths=0.9, linestyles=style)


def example_grid(rows: Sequence[dict], grid_scale: float = 5.0, pixel_mm: float | None = None) -> plt.Figure:
    """One row per ξ (dicts of :func:`xrlib.studies.learned.study.example_rows`): I_0 with the truth (red) and
    the clean prediction (cyan); D as a warped grid (magnified by ``grid_scale``); V; I_DV with the warped truth
    (red), the attacked prediction (yellow) and the clean prediction (cyan, dashed)."""
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 4, figsize=(12, 3.1 * n), squeeze=False)
    unit = "px"
    for i, r in enumerate(rows):
        a = axes[i]
        a[0].imshow(r["image"], cmap="gray", vmin=0, vmax=1)
        _contour(a[0], r["mask"], "r")
        _contour(a[0], r["prob_clean"], "c")
        a[0].set_title(f"I_0 ({r['subject']}, α={r['alpha']:g}°)")
        warped_grid(a[1], r["disp"], step=max(r["disp"].shape[-1] // 16, 2), scale=grid_scale)
        mx = float(np.sqrt((r["disp"] ** 2).sum(0)).max())
        extra = f" = {mx * pixel_mm:.1f} mm" if pixel_mm else ""
        a[1].set_title(f"D ×{grid_scale:g} (max {mx:.2f} px{extra})")
        lim = max(float(np.abs(r["bias"]).max()), 1e-6)
        im = a[2].imshow(r["bias"], cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=a[2], fraction=0.046, label="V (image units)")
        a[2].set_title("V")
        a[3].imshow(r["adv"], cmap="gray", vmin=0, vmax=1)
        _contour(a[3], r["mask_warped"], "r")
        _contour(a[3], r["prob_adv"], "y")
        _contour(a[3], r["prob_clean"], "c", "--")
        a[3].set_title(f"I_DV, ξ = {r['xi']:g}")
        a[0].set_ylabel(f"ξ = {r['xi']:g}\nrow ({unit})")
        for ax in a:
            ax.set_xlabel(f"column ({unit})")
    fig.tight_layout()
    return fig


def dice_vs_xi(results: pd.DataFrame) -> plt.Figure:
    """Mean Dice vs ξ per model and method (D+V), against the warped (solid) and unwarped (dashed) truth."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    r = results[results["variant"] == "DV"]
    for (model, method), g in r.groupby(["model", "method"], sort=False):
        m = g.groupby("budget")[["dice", "dice_unwarped"]].mean()
        if len(m) < 2:
            continue
        line, = ax.plot(m.index, m["dice"], "o-", label=f"{model}, {method}")
        ax.plot(m.index, m["dice_unwarped"], "s--", color=line.get_color(), alpha=0.7)
    ax.set_xlabel("ξ (target masked cross-entropy, nats)")
    ax.set_ylabel("mean Dice")
    ax.set_title("Dice vs ξ (solid: warped truth; dashed: unwarped)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def success_vs_p(results: pd.DataFrame) -> plt.Figure:
    """Per attacked image: Dice drop (% of the clean Dice, warped truth) vs perceptibility p/std, by method × variant;
    the dotted line is the success threshold (30 %)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    r = results[results["budget"] > 0]
    for (model, method, variant), g in r.groupby(["model", "method", "variant"], sort=False):
        drop = 100 * (g["dice_clean"] - g["dice"]) / g["dice_clean"].where(g["dice_clean"] > 0)
        ax.scatter(g["p_rel"], drop, s=18, label=f"{model}, {method}, {variant}", alpha=0.8)
    ax.axhline(30, ls=":", color="k", lw=1)
    ax.set_xlabel("perceptibility p / std(I_0) (dimensionless)")
    ax.set_ylabel("Dice drop (% of clean Dice)")
    ax.set_title("Attack strength vs perceptibility")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
