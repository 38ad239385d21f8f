"""Figures of the robustness card: the models × threats heatmap and the ranking per threat."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["card_heatmap", "card_ranking"]


def _labels(columns, settings=None) -> list[str]:
    at = (lambda c: f", {c.budget(settings)}") if settings is not None else (lambda c: "")
    return [f"{c.title}{at(c)}\n{c.statistic} {'↑' if c.higher_better else '↓'}" for c in columns]


def card_heatmap(matrix: pd.DataFrame, columns: Sequence, title: str = "", settings=None,
                 unranked: pd.DataFrame | None = None) -> plt.Figure:
    """Models (rows) × threats (columns) of the card; the colour is the robustness score — the Dice, or
    1 − the rate for rate columns (SAR, success rate) — so brighter is more robust in every column; the
    cells are annotated with the statistic itself; ``settings`` (the card's) adds each column's budget.
    ``unranked`` (:func:`xrlib.studies.card.analysis.unranked`) greys those cells out and marks them
    "n/a" (no scored image) or with an asterisk (too few scored images to be ranked)."""
    cols = [c for c in columns if c.key in matrix.columns]
    v = matrix[[c.key for c in cols]].to_numpy(float)
    score = np.column_stack([v[:, j] if c.higher_better else 1.0 - v[:, j] for j, c in enumerate(cols)]) if cols else v
    flagged = set() if unranked is None else set(zip(unranked["model"], unranked["column"]))
    grey = np.array([[(m, c.key) in flagged for c in cols] for m in matrix.index], bool).reshape(score.shape)
    score = np.where(grey, np.nan, score)
    fig, ax = plt.subplots(figsize=(1.45 * len(cols) + 3.2, 0.45 * len(matrix) + 2.2), constrained_layout=True)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.85")  # unranked cells: light grey
    im = ax.imshow(np.ma.masked_invalid(score), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            text = ("n/a" if grey[i, j] else "–") if np.isnan(v[i, j]) else f"{v[i, j]:.2f}" + ("*" if grey[i, j] else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if grey[i, j] or score[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(cols)), _labels(cols, settings), fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix)), list(matrix.index), fontsize=8)
    ax.set(xlabel="threat at the card's budget (statistic; ↑ higher / ↓ lower is more robust"
                  + ("; grey: not ranked, * too few scored images" if grey.any() else "") + ")", ylabel="model",
           title=title)
    fig.colorbar(im, ax=ax, label="robustness score (Dice, or 1 − rate)")
    return fig


def card_ranking(ranking: pd.DataFrame, columns: Sequence, title: str = "") -> plt.Figure:
    """One panel per threat: the models from most (top) to least robust, the statistic with its 95 % CI."""
    cols = [c for c in columns if c.key in set(ranking["column"])]
    n = max(len(cols), 1)
    ncol = min(4, n)
    nrow = int(np.ceil(n / ncol))
    k = ranking["model"].nunique()
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 0.32 * k * nrow + 1.6 * nrow), constrained_layout=True,
                             squeeze=False)
    for ax, c in zip(axes.ravel(), cols):
        d = ranking[ranking["column"] == c.key].iloc[::-1]
        y = np.arange(len(d))
        err = np.vstack([d["value"] - d["lo"], d["hi"] - d["value"]]).clip(min=0)
        ax.barh(y, d["value"], xerr=err, color="tab:blue", alpha=0.75, capsize=2)
        ax.set_yticks(y, [f"{r}. {m}" for r, m in zip(d["rank"], d["model"])], fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{c.statistic} {'↑' if c.higher_better else '↓'}", fontsize=8)
        ax.set_title(c.title, fontsize=9)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
